//go:build linux

package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pier-dev/pier/deploy/eventually"
)

// The event-loop engine's several loops (evloop_loops_linux.go). These run
// on both engines (the answers must be the same); on the event loop they
// also look at which loop served what.

// TestLoopsShareConnections opens nine keep-alive connections to a proxy
// with three loops and sends requests on all of them at once: each loop
// holds three connections and answers requests itself, and what the loops
// share (the request counter, the access log, the backends' in-flight and
// request counts that least-conn picks by) adds up to the requests sent.
func TestLoopsShareConnections(t *testing.T) {
	const conns, perConn = 9, 20
	a, b := newBackend(t, "a"), newBackend(t, "b")
	var mu sync.Mutex
	var logBuf bytes.Buffer
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api"}}
		c.Loops = 3
		c.Registerer = prometheus.NewRegistry()
		c.AccessLog, c.AccessLogTo = AccessLogCombined, &lockedWriter{mu: &mu, w: &logBuf}
	})
	e.register("a", "api", a.addr, 1)
	e.register("b", "api", b.addr, 1)
	e.synced()

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	start := make(chan struct{})
	opened := make(chan struct{}, conns)
	for i := range conns {
		c, br := dialProxy(t, e.addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The first request settles which loop holds it; the rest go
			// once every connection is open.
			fmt.Fprintf(c, "GET /api/first HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			opened <- struct{}{}
			if err != nil {
				errs <- fmt.Errorf("connection %d: first request: %v", i, err)
				return
			}
			<-start
			for j := range perConn - 1 {
				fmt.Fprintf(c, "GET /api/%d/%d HTTP/1.1\r\nHost: x\r\n\r\n", i, j)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- fmt.Errorf("connection %d, request %d: %v", i, j, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("connection %d, request %d: %d", i, j, resp.StatusCode)
					return
				}
			}
		}()
	}
	for range conns {
		<-opened
	}
	if e.p.loops != nil {
		if n := len(e.p.loops.ls); n != 3 {
			t.Fatalf("%d loops, want 3 (proxy.loops)", n)
		}
		for i, l := range e.p.loops.ls {
			if n := l.n.Load(); n != conns/3 {
				t.Errorf("loop %d holds %d connections, want %d", i, n, conns/3)
			}
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	const total = conns * perConn
	if e.p.loops != nil {
		for i, l := range e.p.loops.ls {
			if n := l.fast.onLoop.Load(); n < perConn {
				t.Errorf("loop %d answered %d requests itself, want at least %d", i, n, perConn)
			}
		}
	}
	if got := testutil.ToFloat64(e.p.met.requests.WithLabelValues("/api/", "api", "200")); got != total {
		t.Errorf("requests{/api/,api,200} = %v, want %d", got, total)
	}
	var served uint64
	for _, m := range e.bal.Pool("api").Members() {
		served += m.Backend.Requests()
		// Let go of just after the answer is written, on the goroutines.
		eventually.True(t, 10*time.Second, "no request in flight at "+m.Backend.Addr(), func() bool { return m.Backend.InFlight() == 0 })
	}
	if served != total {
		t.Errorf("the backends counted %d requests, want %d", served, total)
	}
	if got := a.hits.Load() + b.hits.Load(); got != total {
		t.Errorf("the instances saw %d requests, want %d", got, total)
	}
	e.close() // flushes the access log
	mu.Lock()
	lines := strings.Count(logBuf.String(), "\n")
	mu.Unlock()
	if lines != total {
		t.Errorf("%d access log lines, want %d", lines, total)
	}
}

// TestLoopsDrainAll shuts down a proxy with two loops while each holds a
// request at a slow instance and an idle keep-alive connection: both
// requests are answered, the idle connections are closed, and Run returns
// with no connection left on any loop.
func TestLoopsDrainAll(t *testing.T) {
	slow := newBackend(t, "slow")
	var atInstance atomic.Int64
	release := make(chan struct{})
	slow.delay = func(r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/slow") {
			atInstance.Add(1)
			<-release
		}
	}
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "api"}}
		c.Loops = 2
	})
	e.register("s", "api", slow.addr, 1)
	e.synced()

	// Four connections, one request each: two per loop. Two of them then
	// send a slow request; the other two stay idle.
	cs := make([]struct {
		c  io.ReadWriter
		br func() (*http.Response, error)
	}, 4)
	for i := range cs {
		c, br := dialProxy(t, e.addr)
		cs[i].c = c
		cs[i].br = func() (*http.Response, error) { return http.ReadResponse(br, nil) }
		fmt.Fprintf(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := cs[i].br()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// Connections were given to the loops in turn: 0 and 1 are on
	// different loops, and so are 2 and 3.
	busy, idle := []int{0, 1}, []int{2, 3}
	if e.p.loops != nil {
		for i, l := range e.p.loops.ls {
			if n := l.n.Load(); n != 2 {
				t.Fatalf("loop %d holds %d connections, want 2", i, n)
			}
		}
	}
	answers := make(chan error, len(busy))
	for _, i := range busy {
		fmt.Fprintf(cs[i].c, "GET /slow/%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		go func() {
			resp, err := cs[i].br()
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				err = fmt.Errorf("the slow request on connection %d: %v", i, err)
			}
			answers <- err
		}()
	}
	eventually.True(t, 10*time.Second, "both slow requests at the instance", func() bool { return atInstance.Load() == 2 })

	closed := make(chan struct{})
	go func() { e.close(); close(closed) }()
	// Idle connections are closed at once, on every loop.
	for _, i := range idle {
		var b [1]byte
		if n, err := cs[i].c.Read(b[:]); err == nil {
			t.Errorf("idle connection %d at shutdown: read %d bytes, want it closed", i, n)
		}
	}
	select {
	case <-closed:
		t.Fatal("Run returned while requests were at the instance")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	for range busy {
		if err := <-answers; err != nil {
			t.Error(err)
		}
	}
	<-closed
	if e.p.loops != nil {
		if n := e.p.loops.openConns(); n != 0 {
			t.Errorf("%d connections still open on the loops after Run returned", n)
		}
	}
}
