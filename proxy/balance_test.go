package proxy

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLeastConnAvoidsSlowInstance: one instance holds every request it gets
// until the end; least-connections sends it only as many as it must.
func TestLeastConnAvoidsSlowInstance(t *testing.T) {
	fast, slow := newBackend(t, "fast"), newBackend(t, "slow")
	release := make(chan struct{})
	slow.delay = func(*http.Request) { <-release }
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("fast", "api", fast.addr, 1)
	e.register("slow", "api", slow.addr, 1)

	const workers, total = 4, 200
	var sent atomic.Int64
	var wg, fastDone sync.WaitGroup
	fastDone.Add(1)
	var once sync.Once
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= total {
				if code, _ := e.get("", "/"); code != 200 {
					t.Errorf("status %d", code)
				}
			}
			once.Do(fastDone.Done)
		}()
	}
	// A worker that never got stuck on the slow instance runs out of work.
	// Were requests spread blindly, every worker would end up stuck there.
	done := make(chan struct{})
	go func() { fastDone.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Error("every worker is stuck on the slow instance")
	}
	s, f := slow.hits.Load(), fast.hits.Load()
	close(release)
	wg.Wait()
	// Least-connections sends the slow instance a request only while it has
	// no more in flight than the fast one: about workers/2 in all (one more
	// when a finished request is still being counted as it is written out).
	if s > workers/2+1 || f < total-workers {
		t.Errorf("slow instance got %d requests, fast %d: least-connections should hold the slow one to about %d", s, f, workers/2)
	}
}

func TestWeights(t *testing.T) {
	heavy, light := newBackend(t, "heavy"), newBackend(t, "light")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("heavy", "api", heavy.addr, 3)
	e.register("light", "api", light.addr, 1)
	for range 400 {
		if code, _ := e.get("", "/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	if h := heavy.hits.Load(); h < 240 || h > 360 {
		t.Errorf("weight 3 of 4 got %d of 400 requests", h)
	}
}

// flaky accepts connections and closes them at once (a crashed app behind
// a live port) until ok is set, then serves.
type flaky struct {
	*backend
	ok    atomic.Bool
	fails atomic.Int64
}

func newFlaky(t *testing.T, name string) *flaky {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &flaky{}
	f.backend = serveBackend(t, name, &flakyListener{Listener: ln, f: f})
	return f
}

type flakyListener struct {
	net.Listener
	f *flaky
}

func (l *flakyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.f.ok.Load() {
			return c, err
		}
		// Read the request so that it has surely reached us, then reset.
		l.f.fails.Add(1)
		go func() {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4096)
			c.Read(buf)
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
		}()
	}
}

func TestPassiveEjectionAndReturn(t *testing.T) {
	good, bad := newBackend(t, "good"), newFlaky(t, "bad")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "api", MaxFails: intp(1), FailTimeout: 300 * time.Millisecond}}
	})
	e.register("good", "api", good.addr, 1)
	e.register("bad", "api", bad.addr, 1)

	// Every request succeeds: one that meets the bad instance is retried on
	// the good one, and after that the bad one is out of rotation.
	for i := 0; bad.fails.Load() == 0; i++ {
		if i == 200 {
			t.Fatal("the bad instance was never picked")
		}
		if code, body := e.get("", "/"); code != 200 {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
	}
	var down time.Time
	for _, r := range e.p.Routes() {
		for _, in := range r.Instances {
			if in.Addr == bad.addr && in.DownUntil != nil {
				down = *in.DownUntil
			}
		}
	}
	if down.IsZero() {
		t.Fatal("the failing instance is not shown as out of rotation")
	}
	fails := bad.fails.Load()
	for range 20 {
		if code, _ := e.get("", "/"); code != 200 {
			t.Fatalf("status %d while the bad instance is out", code)
		}
	}
	if bad.fails.Load() != fails && time.Now().Before(down) {
		t.Errorf("an ejected instance got requests before its fail_timeout ended")
	}

	// Healed, and after fail_timeout, it is tried again and serves.
	bad.ok.Store(true)
	time.Sleep(time.Until(down)) // the fail_timeout itself is under test
	for i := 0; bad.hits.Load() == 0; i++ {
		if i == 200 {
			t.Fatal("the instance did not come back after fail_timeout")
		}
		if code, _ := e.get("", "/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
}

// TestRetries: an idempotent request that meets a broken instance is
// retried on another; a POST that may have reached one never is, but a
// POST whose connection failed is.
func TestRetries(t *testing.T) {
	good, bad := newBackend(t, "good"), newFlaky(t, "bad")
	e := newEnv(t, func(c *Config) {
		// max_fails 0 keeps the broken instance in rotation.
		c.Routes = []Route{{Path: "/", Service: "api", MaxFails: intp(0)}}
	})
	e.register("good", "api", good.addr, 1)
	e.register("bad", "api", bad.addr, 1)

	for i := range 40 {
		if code, body := e.get("", "/"); code != 200 || decode(t, body).Name != "good" {
			t.Fatalf("GET %d: %d %s", i, code, body)
		}
	}
	if bad.fails.Load() == 0 {
		t.Fatal("40 GETs and the broken instance was never tried")
	}

	saw502 := false
	for i := 0; i < 200 && !saw502; i++ {
		beforeGood, beforeBad := good.hits.Load(), bad.fails.Load()
		code, body, _ := e.do("POST", "", "/", strings.NewReader("order=1"))
		switch code {
		case 200:
			if bad.fails.Load() != beforeBad {
				t.Fatalf("a POST that reached the broken instance was sent again to the good one")
			}
		case 502:
			saw502 = true
			if good.hits.Load() != beforeGood || bad.fails.Load() != beforeBad+1 {
				t.Errorf("a failed POST was retried: good %d->%d, bad %d->%d", beforeGood, good.hits.Load(), beforeBad, bad.fails.Load())
			}
			if !strings.Contains(body, `"api"`) {
				t.Errorf("502 body does not name the service: %q", body)
			}
		default:
			t.Fatalf("POST: %d %s", code, body)
		}
	}
	if !saw502 {
		t.Error("no POST ever met the broken instance")
	}

	// Nothing listens: a POST is retried, since nothing was sent.
	e.deregister("bad")
	e.register("dead", "api", deadPort(t), 1)
	for i := range 20 {
		if code, body, _ := e.do("POST", "", "/", strings.NewReader("x")); code != 200 {
			t.Fatalf("POST %d with a dead instance: %d %s", i, code, body)
		}
	}
}

func TestRegistrationIsRoutableAtOnce(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	var best time.Duration = time.Hour
	for i := range 5 {
		b := newBackend(t, "api")
		id := "api-" + string(rune('a'+i))
		// The first request after the registration returns is answered by
		// it: a miss makes the proxy catch up with the catalog itself.
		e.register(id, "api", b.addr, 1)
		if code, body := e.get("", "/"); code != 200 || decode(t, body).Name != "api" {
			t.Fatalf("first request after registering: %d %s", code, body)
		}
		e.deregister(id)
		e.synced()

		// Without a request to trigger it, Run applies a change within 10ms.
		start := time.Now()
		e.register(id, "api", b.addr, 1)
		e.synced()
		best = min(best, time.Since(start))
		e.deregister(id)
		e.synced()
		b.stop()
	}
	if best > 10*time.Millisecond {
		t.Errorf("a registration took %v to reach the pools", best)
	}
	t.Logf("registration to pool: %v", best)
}

func TestRollingRestartUnderLoad(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	const n = 3
	backends := make([]*backend, n)
	for i := range backends {
		backends[i] = newBackend(t, "api")
		e.register(ids[i], "api", backends[i].addr, 1)
	}

	stop := make(chan struct{})
	okc := make(chan struct{}, 4096) // one token per good answer, for pacing the restarts
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000 && time.Now().Before(deadline); i++ {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", "http://"+e.addr+"/", nil)
				resp, err := e.http.Do(req)
				if err != nil {
					failed.Add(1)
					t.Errorf("request: %v", err)
					continue
				}
				var sb bytes.Buffer
				sb.ReadFrom(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					t.Errorf("status %d: %s", resp.StatusCode, sb.String())
					continue
				}
				ok.Add(1)
				select {
				case okc <- struct{}{}:
				default:
				}
			}
		}()
	}
	// waitOK lets k more requests succeed, so each step happens under load.
	waitOK := func(k int) {
		timeout := time.After(time.Until(deadline))
		for range k {
			select {
			case <-okc:
			case <-timeout:
				t.Fatal("the load stalled")
			}
		}
	}
	waitOK(100)
	for i := range backends {
		e.deregister(ids[i])
		e.synced()
		backends[i].stop() // in-flight requests finish
		waitOK(100)
		backends[i] = newBackend(t, "api")
		e.register(ids[i], "api", backends[i].addr, 1)
		waitOK(100)
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() < 100 {
		t.Errorf("rolling restart: %d ok, %d failed", ok.Load(), failed.Load())
	}
	t.Logf("rolling restart: %d requests, %d failed", ok.Load(), failed.Load())
}

// TestDraining: an instance that leaves the pool gets no new requests, and
// the request it is serving finishes.
func TestDraining(t *testing.T) {
	a, b := newBackend(t, "a"), newBackend(t, "b")
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a.delay = func(*http.Request) { once.Do(func() { close(started); <-release }) }
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("a", "api", a.addr, 1)
	done := make(chan int, 1)
	go func() { code, _ := e.get("", "/"); done <- code }()
	<-started
	e.register("b", "api", b.addr, 1)
	e.deregister("a")
	e.synced()
	for range 20 {
		if code, body := e.get("", "/"); code != 200 || decode(t, body).Name != "b" {
			t.Fatalf("after a left the pool: %d %s", code, body)
		}
	}
	close(release)
	if code := <-done; code != 200 {
		t.Errorf("the request in flight on the drained instance: %d", code)
	}
}

var ids = []string{"api-1", "api-2", "api-3"}
