package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// backend is a small HTTP server on a fixed loopback port that answers
// its name, and can be killed and started again on the same port.
type backend struct {
	t    *testing.T
	name string
	addr string
	srv  *http.Server
}

func startBackend(t *testing.T, name, addr string) *backend {
	t.Helper()
	b := &backend{t: t, name: name, addr: addr}
	b.start()
	t.Cleanup(b.kill)
	return b
}

func (b *backend) start() {
	ln, err := net.Listen("tcp", b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, b.name) })}
	go b.srv.Serve(ln)
}

func (b *backend) kill() { b.srv.Close() }

// TestFrontDoorFailover: a route with failover: {nearest: 1} on dc1's
// front door, under constant load; dc1's only instance is killed: the
// route moves to dc2's instance, and back once dc1's is healthy again.
// It reports the failed requests, the time until the first answer from
// dc2 and the time until the first answer from dc1 again.
func TestFrontDoorFailover(t *testing.T) {
	needBinary(t)
	dc1 := startDatacenter(t, "dc1", 0, "")
	dc2 := startDatacenter(t, "dc2", 1, dc1.server.wan)
	conf := filepath.Join(tempDataDir(t), "door.yaml")
	if err := os.WriteFile(conf, []byte("proxy:\n  addr: 127.0.0.1:0\n  routes:\n    - path: /\n      service: web\n      failover: {nearest: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	door := startAgent(t, "-datacenter", "dc1", "-node", "door", "-bind", "127.0.0.1", "-data-dir", tempDataDir(t),
		"-retry-join", dc1.server.gossip, "-retry-interval", "1s", "-config-file", conf)
	c1, c2 := apiClient(t, door.addr), apiClient(t, dc2.clients[0].addr)
	b1 := startBackend(t, "dc1", "127.0.0.1:0")
	b2 := startBackend(t, "dc2", "127.0.0.1:0")
	register := func(c *consul.Client, b *backend) {
		t.Helper()
		host, port, _ := net.SplitHostPort(b.addr)
		p, _ := strconv.Atoi(port)
		if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "web", Name: "web", Address: host, Port: p,
			Check: &consul.AgentServiceCheck{HTTP: "http://" + b.addr + "/", Interval: "1s", Timeout: "500ms"}}); err != nil {
			t.Fatal(err)
		}
	}
	register(c1, b1)
	register(c2, b2)
	front := "http://" + door.proxyAddr() + "/"
	hc := &http.Client{Timeout: 5 * time.Second}
	answer := func() (string, bool) {
		resp, err := hc.Get(front)
		if err != nil {
			return "", false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.StatusCode == 200
	}
	eventually.True(t, 30*time.Second, "the front door serves dc1", func() bool { a, ok := answer(); return ok && a == "dc1" })
	eventually.True(t, 30*time.Second, "dc2's instance is healthy and known to dc1", func() bool {
		es, _, err := c1.Health().Service("web", "", true, &consul.QueryOptions{Datacenter: "dc2"})
		return err == nil && len(es) == 1
	})
	eventually.True(t, 10*time.Second, "the route's failover pool is ready", func() bool {
		var routes []struct{ Failover *struct{ Nearest int } }
		code, body := get(t, "http://"+door.addr+"/v1/pier/routes")
		return code == 200 && jsonInto(body, &routes) && len(routes) == 1 && routes[0].Failover != nil
	})
	time.Sleep(1500 * time.Millisecond) // the failover watch has answered since dc2's instance is known (it follows dc2 by blocking queries); margin for a loaded machine

	// Constant load: one client, back to back, bounded in count and time.
	type result struct {
		at   time.Time
		from string
		ok   bool
	}
	var mu sync.Mutex
	var results []result
	ctx, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200000 && ctx.Err() == nil; i++ {
			from, ok := answer()
			mu.Lock()
			results = append(results, result{time.Now(), from, ok})
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	since := func(t0 time.Time, from string) (time.Duration, bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range results {
			if r.at.After(t0) && r.ok && r.from == from {
				return r.at.Sub(t0), true
			}
		}
		return 0, false
	}
	time.Sleep(300 * time.Millisecond)
	killed := time.Now()
	b1.kill()
	var toDC2, back time.Duration
	eventually.True(t, 30*time.Second, "the route serves from dc2", func() bool {
		var ok bool
		toDC2, ok = since(killed, "dc2")
		return ok
	})
	code, body := get(t, "http://"+door.addr+"/v1/pier/routes")
	if code != 200 || !contains(body, `"ServingFrom":"dc2"`) {
		t.Errorf("/v1/pier/routes while failed over: %s", body)
	}
	if out, _, _ := pier(t, "routes", "-http-addr", door.addr); !contains(out, "failed over to dc2") {
		t.Errorf("pier routes while failed over:\n%s", out)
	}
	time.Sleep(2 * time.Second) // load on dc2 for a while
	restarted := time.Now()
	b1.start()
	eventually.True(t, 30*time.Second, "the route comes back to dc1", func() bool {
		var ok bool
		back, ok = since(restarted, "dc1")
		return ok
	})
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	var total, failed, failedAfter int
	firstDC2 := killed.Add(toDC2)
	for _, r := range results {
		total++
		if !r.ok {
			failed++
			if r.at.After(firstDC2) {
				failedAfter++
			}
		}
	}
	t.Logf("front-door failover under load: %d requests, %d failed (%d after the first answer from dc2); first answer from dc2 %v after dc1's instance was killed, from dc1 again %v after it restarted",
		total, failed, failedAfter, toDC2.Round(time.Millisecond), back.Round(time.Millisecond))
	if failedAfter > 0 {
		t.Errorf("%d requests failed after the route had moved to dc2", failedAfter)
	}
}

func jsonInto(body string, v any) bool { return json.Unmarshal([]byte(body), v) == nil }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
