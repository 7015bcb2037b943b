package proxy

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// TestNamedPortRoute: a route with port: <name> sends to that named port of
// a multi-port service; a route without one to its default port.
func TestNamedPortRoute(t *testing.T) {
	web, admin := newBackend(t, "web"), newBackend(t, "admin")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{
			{Path: "/app/", Service: "app", Strip: "/app"},
			{Path: "/admin/", Service: "app", Port: "admin", Strip: "/admin"},
			{Path: "/nope/", Service: "app", Port: "nope"},
		}
	})
	port := func(addr string) int {
		_, p, _ := net.SplitHostPort(addr)
		n, _ := strconv.Atoi(p)
		return n
	}
	svc := registry.Service{ID: "app1", Name: "app", Address: "127.0.0.1", Port: port(web.addr), Weights: registry.Weights{Passing: 1, Warning: 1},
		Ports: []registry.ServicePort{{Name: "http", Port: port(web.addr), Default: true}, {Name: "admin", Port: port(admin.addr)}}}
	if err := e.reg.RegisterService(svc, nil, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.KVPut(KVRoutePrefix+"kvadmin", []byte("path: /kvadmin/\nservice: app\nport: admin\nstrip: /kvadmin\n"), 0, nil); err != nil {
		t.Fatal(err)
	}
	e.synced()
	for _, c := range []struct{ path, name, uri string }{
		{"/app/x", "web", "/x"},
		{"/admin/stats", "admin", "/stats"},
		{"/kvadmin/stats", "admin", "/stats"},
	} {
		code, body := e.get("", c.path)
		if code != 200 {
			t.Errorf("%s: %d %s", c.path, code, body)
			continue
		}
		if got := decode(t, body); got.Name != c.name || got.URI != c.uri {
			t.Errorf("%s: went to %s as %q, want %s as %q", c.path, got.Name, got.URI, c.name, c.uri)
		}
	}
	// No instance has a port of that name: no instance for the route.
	if code, body := e.get("", "/nope/x"); code != 502 || !strings.Contains(body, `port named "nope"`) {
		t.Errorf("/nope/x: %d %s, want 502 naming the port", code, body)
	}
	for _, r := range e.p.Routes() {
		if r.Path == "/admin/" && (r.Port != "admin" || len(r.Instances) != 1 || r.Instances[0].Addr != admin.addr || r.Total != 1) {
			t.Errorf("route /admin/ shown as %+v", r)
		}
	}
	if _, err := ParseRoute([]byte("path: /x/\nservice: app\nport: \"a b\"\n")); err == nil {
		t.Error("a port name with a space was accepted")
	}
}
