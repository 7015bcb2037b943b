package proxy

import (
	"strings"
	"testing"
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
