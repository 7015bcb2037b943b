package proxy

import (
	"strings"
	"testing"
)

func TestParseRoute(t *testing.T) {
	good := map[string]Route{
		"path: /api/\nservice: api\nstrip: /api\n":                    {Path: "/api/", Service: "api", Strip: "/api"},
		`{"host":"shop.example.com","service":"shop"}`:                {Host: "shop.example.com", Service: "shop"},
		"path: /v2\nservice: api\nprepend: /api\nfail_timeout: 30s\n": {Path: "/v2", Service: "api", Prepend: "/api", FailTimeout: 30e9},
	}
	for in, want := range good {
		got, err := ParseRoute([]byte(in))
		if err != nil || got.Path != want.Path || got.Host != want.Host || got.Service != want.Service || got.Strip != want.Strip || got.Prepend != want.Prepend || got.FailTimeout != want.FailTimeout {
			t.Errorf("ParseRoute(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "just text", "path: /x\n", "path: x\nservice: a\n", "service: a\nbogus: 1\n", "service: a\nfail_timeout: soon\n", "[1, 2]"} {
		if _, err := ParseRoute([]byte(in)); err == nil {
			t.Errorf("ParseRoute(%q) accepted", in)
		}
	}
}

// TestKVRoutes: a route written to pier/routes/ is served, a bad one is
// skipped, and deleting the key takes the route away.
func TestKVRoutes(t *testing.T) {
	e := newEnv(t, nil)
	b := newBackend(t, "b1")
	e.register("api-1", "api", b.addr, 1)
	if code, _ := e.get("", "/api/x"); code != 404 {
		t.Fatalf("before the KV route: %d", code)
	}
	e.reg.KVPut(KVRoutePrefix+"api", []byte("path: /api/\nservice: api\nstrip: /api\n"), 0, nil)
	e.reg.KVPut(KVRoutePrefix+"broken", []byte("path: nope\n"), 0, nil)
	e.synced()
	code, body := e.get("", "/api/x")
	if code != 200 || decode(t, body).URI != "/x" {
		t.Fatalf("through the KV route: %d %s", code, body)
	}
	var sources []string
	for _, r := range e.p.routes.Load().all {
		sources = append(sources, r.Path+"="+r.Source)
	}
	if strings.Join(sources, ",") != "/api/=kv" {
		t.Errorf("routes: %v", sources)
	}
	var shown []string
	for _, ri := range e.p.Routes() {
		shown = append(shown, ri.Key+":"+ri.Error)
	}
	if len(shown) != 2 || shown[0] != KVRoutePrefix+"api:" || !strings.HasPrefix(shown[1], KVRoutePrefix+"broken:route") {
		t.Errorf("/v1/pier/routes shows %q; want the good route and the bad one with its error", shown)
	}
	e.reg.KVDelete(KVRoutePrefix+"api", false, nil)
	e.synced()
	if code, _ := e.get("", "/api/x"); code != 404 {
		t.Fatalf("after deleting the KV route: %d", code)
	}
}
