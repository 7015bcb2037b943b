package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestKVAcrossAgents: pier kv on one agent, curl on another, through gossip.
func TestKVAcrossAgents(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, "-node", "kva", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	b := startAgent(t, "-node", "kvb", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)

	out, errOut, rc := pier(t, "kv", "put", "-http-addr", a.addr, "config/app/db", "postgres://db:5432")
	if rc != 0 || !strings.Contains(out, "Success! Data written to: config/app/db") {
		t.Fatalf("pier kv put: %d %s%s", rc, out, errOut)
	}
	got := watch(t, "http://"+b.addr+"/v1/kv/config/?recurse", 10*time.Second, func(ps []struct {
		Key   string
		Value []byte
	}) bool {
		return len(ps) == 1
	})
	if got[0].Key != "config/app/db" || string(got[0].Value) != "postgres://db:5432" {
		t.Errorf("b sees %+v", got)
	}
	if code, body := curl(t, "http://"+b.addr+"/v1/kv/config/app/db?raw"); code != 200 || body != "postgres://db:5432" {
		t.Errorf("raw on b: %d %q", code, body)
	}
	out, _, rc = pier(t, "kv", "get", "-http-addr", b.addr, "config/app/db")
	if rc != 0 || strings.TrimSpace(out) != "postgres://db:5432" {
		t.Errorf("pier kv get on b: %d %q", rc, out)
	}
	if _, _, rc = pier(t, "kv", "delete", "-http-addr", b.addr, "config/app/db"); rc != 0 {
		t.Fatalf("pier kv delete: %d", rc)
	}
	watch(t, "http://"+a.addr+"/v1/kv/?keys", 10*time.Second, func(keys []string) bool { return len(keys) == 0 })
	_, errOut, rc = pier(t, "kv", "get", "-http-addr", a.addr, "config/app/db")
	if rc != 1 || !strings.Contains(errOut, "no key exists") {
		t.Errorf("get of a deleted key: %d %q", rc, errOut)
	}
}

// TestKVRouteReachesFrontDoor: a route written with pier kv on a backend
// node is served by the front door on another node.
func TestKVRouteReachesFrontDoor(t *testing.T) {
	requireCurl(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "api got %s", r.URL.Path)
	}))
	defer backend.Close()
	front := startAgent(t, "-node", "front", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-proxy-addr", "127.0.0.1:0")
	back := startAgent(t, "-node", "back", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", front.gossip)
	port := backend.URL[strings.LastIndexByte(backend.URL, ':')+1:]
	if code, body := curl(t, "-X", "PUT", "-d", `{"Name":"api","Address":"127.0.0.1","Port":`+port+`}`, "http://"+back.addr+"/v1/agent/service/register"); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	watch(t, "http://"+front.addr+"/v1/catalog/service/api", 10*time.Second, func(es []struct{ Node string }) bool { return len(es) == 1 })
	if code, _ := curl(t, "http://"+front.proxyAddr()+"/api/hello"); code != 404 {
		t.Fatalf("before the route: %d", code)
	}
	start := time.Now()
	if _, errOut, rc := pier(t, "kv", "put", "-http-addr", back.addr, "pier/routes/api", "path: /api/\nservice: api\nstrip: /api\n"); rc != 0 {
		t.Fatalf("pier kv put: %s", errOut)
	}
	for {
		code, body := curl(t, "http://"+front.proxyAddr()+"/api/hello")
		if code == 200 {
			if body != "api got /hello" {
				t.Errorf("through the KV route: %q", body)
			}
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the KV route was not served within 10s: %d %s", code, body)
		}
	}
	t.Logf("the route was served %v after pier kv put returned", time.Since(start))
}
