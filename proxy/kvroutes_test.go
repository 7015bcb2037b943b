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

// TestParseRouteACME: tls: acme in a KV route or tls=acme in a tag is the
// front door's certificate for the host (Route.ACME), not TLS to the
// instances; anything else in their place is refused, naming it.
func TestParseRouteACME(t *testing.T) {
	for _, in := range []string{"host: a.example.com\nservice: a\ntls: acme\n", `{"host":"a.example.com","service":"a","tls":"acme"}`} {
		r, err := ParseRoute([]byte(in))
		if err != nil || !r.ACME || r.TLS || r.Host != "a.example.com" {
			t.Errorf("ParseRoute(%q) = %+v, %v; want ACME and no upstream TLS", in, r, err)
		}
	}
	if r, err := ParseRoute([]byte("host: a.example.com\nservice: a\ntls: true\n")); err != nil || r.ACME || !r.TLS {
		t.Errorf("tls: true = %+v, %v", r, err)
	}
	for in, want := range map[string]string{
		"host: a.example.com\nservice: a\ntls: letsencrypt\n": `tls "letsencrypt"`,
		"path: /x\nservice: a\ntls: acme\n":                   "needs the route's host",
	} {
		if _, err := ParseRoute([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRoute(%q): %v, want %q", in, err, want)
		}
	}
	r, ok, err := ParseTag("urlprefix-shop.example.com/ tls=acme")
	if !ok || err != nil || !r.ACME || r.TLS || r.Host != "shop.example.com" {
		t.Errorf("tls=acme tag: %+v, %v, %v", r, ok, err)
	}
	if _, _, err := ParseTag("urlprefix-/x tls=acme"); err == nil || !strings.Contains(err.Error(), "needs a host") {
		t.Errorf("tls=acme without a host: %v", err)
	}
	if _, _, err := ParseTag("urlprefix-shop.example.com/ tls=yes"); err == nil || !strings.Contains(err.Error(), "tls=yes") {
		t.Errorf("tls=yes tag: %v", err)
	}
}
