package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
)

// FuzzParseTag: tags arrive from the network through the API; parsing one
// never panics, and a route it accepts is valid.
func FuzzParseTag(f *testing.F) {
	for _, s := range []string{"urlprefix-/api strip=/api", "urlprefix-shop.example.com/", "urlprefix-/v2 prepend=/api/v2",
		"urlprefix-:3306 proto=tcp", "urlprefix-", "v1", "urlprefix-a/b/c strip=/x prepend=/y proto=http"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tag string) {
		r, ok, err := ParseTag(tag)
		if !ok || err != nil {
			return
		}
		r.Service = "svc"
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseTag(%q) accepted an invalid route: %v", tag, err)
		}
		if !strings.HasPrefix(r.Path, "/") {
			t.Fatalf("ParseTag(%q): path %q", tag, r.Path)
		}
	})
}

// FuzzLookup: any host and path from a request finds a route or none
// without panicking, and a rewritten path always starts with /.
func FuzzLookup(f *testing.F) {
	rt := benchRoutes()
	f.Add([]byte("host42.example.com:80"), []byte("/api/users?x=1"))
	f.Add([]byte("[::1]:8080"), []byte("/svc7"))
	f.Add([]byte(""), []byte("/"))
	f.Fuzz(func(t *testing.T, host, path []byte) {
		if len(path) == 0 || path[0] != '/' {
			return
		}
		r := rt.lookup(host, path)
		if r == nil {
			return
		}
		out := r.rewrite(nil, path)
		if len(out) == 0 || out[0] != '/' {
			t.Fatalf("rewrite(%q) by %s%s = %q", path, r.Host, r.Path, out)
		}
	})
}

// FuzzParseRoute: a route from the KV store (YAML or JSON, the config
// file's shape). One it accepts is valid, reads back the same when written
// out again as JSON or YAML, and is what a request for its own host and path
// finds in a table that also has a catch-all route.
func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{
		"path: /api/\nservice: api\nstrip: /api\n",
		`{"host":"shop.example.com","service":"shop"}`,
		"path: /v2\nservice: api\nprepend: /api\nfail_timeout: 30s\nmax_fails: 3\n",
		"host: Shop.Example.COM:8080\npath: /\nservice: shop\n",
		"host: '[::1]:80'\nservice: v6\n",
		"service: a\nmax_fails: 0\nfail_timeout: 0s\n",
		"service: a\nmax_fails: -1\n",
		"service: a\nfail_timeout: -1s\n",
		"service: a\nfail_timeout: 1e3\n",
		"service: yes\npath: /null\n",
		"service: 1\n",
		"Service: a\nFAIL-TIMEOUT: 1s\n",
		"service: a\nservice: b\n",
		"service: a\nbogus: 1\n",
		"path: x\nservice: a\n",
		"host: a b\nservice: a\n",
		"host: ÉCOLE.example\nservice: a\n",
		"service: a\npath: //x\n",
		"service: a\nfailover: {nearest: 2}\n",
		"service: a\nfailover: {datacenters: [dc2, dc3], nearest: 1}\n",
		"service: a\nfailover: {nearest: -1}\n",
		"service: a\nfailover: {}\n",
		"service: a\nfailover: {datacenters: ['']}\n",
		"[1, 2]", "~", "", "---\n---\n", "service: &a x\nhost: *a\n", "{service: a, path: /\u0000}",
	} {
		f.Add([]byte(s))
	}
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ParseRoute(in)
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("ParseRoute(%q): an empty error", in)
			}
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseRoute(%q) accepted an invalid route: %v", in, err)
		}
		// Written out with Route's json names, the config file's keys,
		// which the parser takes: a field it cannot read back shows here.
		var out map[string]any
		b, _ := json.Marshal(r)
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatal(err)
		}
		if r.FailTimeout != 0 {
			out["fail_timeout"] = r.FailTimeout.String()
		} else {
			delete(out, "fail_timeout")
		}
		if utf8.Valid(b) && !bytes.Contains(b, []byte(`\ufffd`)) {
			j, _ := json.Marshal(out)
			y, err := yaml.Marshal(out)
			if err != nil {
				t.Fatalf("%+v does not marshal to YAML: %v", r, err)
			}
			for _, b := range [][]byte{j, y} {
				r2, err := ParseRoute(b)
				if err != nil || !sameRoute(r, r2) {
					t.Fatalf("ParseRoute(%q) = %+v; written out as %q it reads %+v, %v", in, r, b, r2, err)
				}
			}
		}
		if r.TLSCAFile != "" {
			return // the table reads the bundle, and leaves the route out when it cannot
		}
		rt := buildRoutes([]Route{r, {Path: "/", Service: "\x00catch-all"}}, nil, false, 1, 0, discard, nil)
		host, path := r.Host, r.Path
		if host == "" {
			host = "any.example"
		}
		if path == "" {
			path = "/"
		}
		got := rt.lookup([]byte(host), []byte(path))
		if got == nil || got.Service != r.Service {
			t.Fatalf("ParseRoute(%q) = %+v; a request for %q %q finds %+v", in, r, host, path, got)
		}
		if w := got.rewrite(nil, []byte(path)); len(w) == 0 || w[0] != '/' {
			t.Fatalf("route %+v rewrites %q to %q", r, path, w)
		}
	})
}

func sameRoute(a, b Route) bool {
	if (a.MaxFails == nil) != (b.MaxFails == nil) || a.MaxFails != nil && *a.MaxFails != *b.MaxFails {
		return false
	}
	if (a.Failover == nil) != (b.Failover == nil) || a.Failover != nil &&
		(a.Failover.Nearest != b.Failover.Nearest || !slices.Equal(a.Failover.Datacenters, b.Failover.Datacenters)) {
		return false
	}
	a.MaxFails, b.MaxFails, a.Failover, b.Failover = nil, nil, nil, nil
	return a == b
}
