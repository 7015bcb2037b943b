package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// routesWithoutPermission walks every pattern registered on s's mux and
// answers those that declare no permission. A pattern is probed with a
// request built from it, so that the walk covers what the mux serves, not
// only what route.go recorded.
func routesWithoutPermission(t *testing.T, s *Server) []string {
	t.Helper()
	var bad []string
	for pattern, rt := range s.perms {
		method, path := "GET", patternPath(pattern)
		if m, _, ok := strings.Cut(pattern, " "); ok && !strings.HasPrefix(pattern, "/") {
			method = m
		}
		// Fill each wildcard with a value it matches.
		var b strings.Builder
		for rest := path; rest != ""; {
			i := strings.IndexByte(rest, '{')
			if i < 0 {
				b.WriteString(rest)
				break
			}
			b.WriteString(rest[:i])
			j := strings.IndexByte(rest, '}')
			b.WriteString("x")
			rest = rest[j+1:]
		}
		r := httptest.NewRequest(method, b.String(), nil)
		if _, got := s.mux.Handler(r); got != pattern {
			t.Errorf("%s: a request to %s %s is served by %q", pattern, method, b.String(), got)
		}
		if rt.perm == nil {
			bad = append(bad, pattern)
		}
	}
	sort.Strings(bad)
	return bad
}

func newRouteTestServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Registry = reg
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Every route the API registers declares the permission it needs where it
// is registered; one that does not is found by the walk, and refused at
// the gate to every token but management.
func TestEveryRouteHasPermission(t *testing.T) {
	withACL := DefaultConfig()
	withACL.ACL = ACLConfig{Enabled: true, DefaultPolicy: "allow", InitialManagement: "root"}
	withDebug := DefaultConfig()
	withDebug.EnableDebug = true
	withRaft := withACL
	withRaft.Consensus = noServers{}
	for name, cfg := range map[string]Config{"acl": withACL, "debug": withDebug, "default": DefaultConfig(), "raft": withRaft} {
		s := newRouteTestServer(t, cfg)
		s.Handle("GET /ui/", http.NotFoundHandler()) // as cmd/pier mounts the UI
		if len(s.perms) < 60 {
			t.Errorf("%s: only %d routes walked", name, len(s.perms))
		}
		if bad := routesWithoutPermission(t, s); len(bad) > 0 {
			t.Errorf("%s: routes without a permission: %v", name, bad)
		}
	}

	// The walk finds a route that forgot its permission, and the gate
	// refuses it even under the default policy allow.
	s := newRouteTestServer(t, withACL)
	s.route("GET /v1/agent/forgotten/{x}", func(w http.ResponseWriter, r *http.Request) {}, nil)
	if bad := routesWithoutPermission(t, s); len(bad) != 1 || bad[0] != "GET /v1/agent/forgotten/{x}" {
		t.Errorf("the walk found %v, want the forgotten route", bad)
	}
	for token, want := range map[string]int{"": http.StatusForbidden, "root": http.StatusOK} {
		r := httptest.NewRequest("GET", "/v1/agent/forgotten/a", nil)
		r.Header.Set("X-Consul-Token", token)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("token %q: %d, want %d", token, w.Code, want)
		}
	}
}

// No file of the package registers on the mux but route.go, whose
// functions take a permission: a route added any other way would not be
// walked above.
func TestRoutesRegisterOnlyThroughRoute(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "route.go" {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc" {
				return true
			}
			if x, ok := sel.X.(*ast.SelectorExpr); ok && x.Sel.Name == "mux" {
				t.Errorf("%s: registers on the mux directly; use s.route, s.writes or s.Handle", fset.Position(sel.Pos()))
			}
			return true
		})
	}
}
