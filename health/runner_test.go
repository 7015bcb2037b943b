package health

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pier-dev/pier/registry"
)

// The tests below run inside a synctest bubble: time is fake and moves only
// when every goroutine of the bubble is blocked, so "sleep 10s, then look"
// is exact and instant. The targets (HTTP, TCP, gRPC servers) are real
// loopback servers started outside the bubble; a probe's network I/O keeps
// fake time still until it completes.

// newCatalog makes the in-memory registry of node1 at 127.0.0.1 that the
// checks run against.
func newCatalog(tb testing.TB) *registry.Registry {
	tb.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = "node1"
	rcfg.Address = "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		tb.Fatal(err)
	}
	return reg
}

// startRunner makes an in-memory registry and runs a Runner on it until the
// bubble's test ends.
func startRunner(t *testing.T, cfg Config) (*registry.Registry, *Runner) {
	t.Helper()
	reg := newCatalog(t)
	cfg.Catalog = reg
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	synctest.Wait()
	return reg, r
}

// register registers a service from its JSON definition, as the API does.
func register(t *testing.T, reg *registry.Registry, js string) {
	t.Helper()
	def, err := registry.DecodeService([]byte(js), false)
	if err != nil {
		t.Fatal(err)
	}
	s, checks, err := def.Build()
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.RegisterService(s, checks, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
}

func checkEntry(reg *registry.Registry, id string) *registry.CheckEntry {
	for _, c := range reg.Snapshot().AllNodeChecks("node1") {
		if c.CheckID == id {
			return c
		}
	}
	return nil
}

// wantCheck asserts the status of check id and that its output contains out.
func wantCheck(t *testing.T, reg *registry.Registry, id string, st registry.Status, out string) {
	t.Helper()
	c := checkEntry(reg, id)
	switch {
	case c == nil:
		t.Errorf("%s: no such check", id)
	case c.Status != st || !strings.Contains(c.Output, out):
		t.Errorf("%s at %v: %s %q, want %s with %q", id, time.Now().Format(time.TimeOnly), c.Status, c.Output, st, out)
	}
}

// after advances fake time by d and waits until every goroutine of the
// bubble has acted on it.
func after(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestHTTPCheckFlips(t *testing.T) {
	s := newFlipServer(t)
	synctest.Test(t, func(t *testing.T) {
		reg, _ := startRunner(t, Config{})
		register(t, reg, `{"ID":"web1","Name":"web","Check":{"HTTP":"`+s.URL+`/health","Interval":"10s"}}`)
		wantCheck(t, reg, "service:web1", registry.StatusCritical, "") // Consul's initial status
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusPassing, "200 OK Output: hello")
		s.code.Store(500)
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusCritical, "500 Internal Server Error")
		s.code.Store(429)
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusWarning, "429 Too Many Requests")
		s.code.Store(200)
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusPassing, "200 OK")
		if in := reg.Snapshot().ServiceInstances("web"); len(in) != 1 || in[0].Status() != registry.StatusPassing {
			t.Errorf("instance status: %+v", in)
		}
	})
}

func TestTCPAndGRPCChecks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpAddr := ln.Addr().String()
	grpcAddr, hs := grpcServer(t)
	synctest.Test(t, func(t *testing.T) {
		reg, _ := startRunner(t, Config{})
		register(t, reg, `{"ID":"db1","Name":"db","Checks":[{"TCP":"`+tcpAddr+`","Interval":"5s"},{"GRPC":"`+grpcAddr+`/db","Interval":"5s","Status":"passing"}]}`)
		after(5 * time.Second)
		wantCheck(t, reg, "service:db1:1", registry.StatusPassing, "TCP connect "+tcpAddr+": Success")
		wantCheck(t, reg, "service:db1:2", registry.StatusCritical, "NotFound") // unknown service "db"
		hs.SetServingStatus("db", 1)                                            // SERVING
		ln.Close()
		after(5 * time.Second)
		wantCheck(t, reg, "service:db1:1", registry.StatusCritical, "refused")
		wantCheck(t, reg, "service:db1:2", registry.StatusPassing, "success")
		hs.SetServingStatus("db", 2) // NOT_SERVING
		after(5 * time.Second)
		wantCheck(t, reg, "service:db1:2", registry.StatusCritical, "NOT_SERVING")
	})
}

func TestThresholdsInRunner(t *testing.T) {
	s := newFlipServer(t)
	synctest.Test(t, func(t *testing.T) {
		reg, _ := startRunner(t, Config{})
		register(t, reg, `{"ID":"web1","Name":"web","Check":{"HTTP":"`+s.URL+`","Interval":"10s",
			"SuccessBeforePassing":2,"FailuresBeforeWarning":1,"FailuresBeforeCritical":3}}`)
		// One probe per step: the target answers code, then the check is st.
		for i, step := range []struct {
			code int32
			st   registry.Status
			out  string
		}{
			{200, registry.StatusCritical, ""}, // one success of two
			{200, registry.StatusPassing, "200 OK"},
			{503, registry.StatusWarning, "503"},
			{503, registry.StatusWarning, "503"},
			{503, registry.StatusCritical, "503"},
			{200, registry.StatusCritical, "503"}, // one success after failures is not enough
			{200, registry.StatusPassing, "200"},
		} {
			t.Logf("step %d: the target answers %d", i, step.code)
			s.code.Store(step.code)
			after(10 * time.Second)
			wantCheck(t, reg, "service:web1", step.st, step.out)
		}
	})
}

func TestTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg, r := startRunner(t, Config{})
		register(t, reg, `{"ID":"job1","Name":"job","Checks":[{"TTL":"30s"},{"TCP":"127.0.0.1:1","Interval":"1h"}]}`)
		// Right after registration, before the runner has woken up.
		if err := r.UpdateTTL("service:job1:1", registry.StatusPassing, "working"); err != nil {
			t.Fatal(err)
		}
		wantCheck(t, reg, "service:job1:1", registry.StatusPassing, "working")
		after(29 * time.Second)
		wantCheck(t, reg, "service:job1:1", registry.StatusPassing, "working")
		after(time.Second)
		wantCheck(t, reg, "service:job1:1", registry.StatusCritical, "TTL expired (last output before timeout follows): working")

		// Each update restarts the TTL.
		for i := range 5 {
			if err := r.UpdateTTL("service:job1:1", registry.StatusWarning, "beat "+strconv.Itoa(i)); err != nil {
				t.Fatal(err)
			}
			after(20 * time.Second)
			wantCheck(t, reg, "service:job1:1", registry.StatusWarning, "beat "+strconv.Itoa(i))
		}
		after(10 * time.Second)
		wantCheck(t, reg, "service:job1:1", registry.StatusCritical, "TTL expired (last output before timeout follows): beat 4")

		for _, id := range []string{"service:job1:2", "nope", "serfHealth"} {
			if err := r.UpdateTTL(id, registry.StatusPassing, ""); !errors.Is(err, registry.ErrNotFound) || !strings.Contains(err.Error(), "does not have associated TTL") {
				t.Errorf("UpdateTTL(%s): %v", id, err)
			}
		}
		if err := r.UpdateTTL("service:job1:1", "maintenance", ""); err == nil {
			t.Error("UpdateTTL accepted status maintenance")
		}
		// A long output is cut at 4 KiB.
		r.UpdateTTL("service:job1:1", registry.StatusPassing, strings.Repeat("y", 5000))
		if c := checkEntry(reg, "service:job1:1"); len(c.Output) != 4096 {
			t.Errorf("output of %d bytes kept", len(c.Output))
		}
	})
}

func TestDeregisterCriticalServiceAfter(t *testing.T) {
	s := newFlipServer(t)
	dead := closedPort(t)
	synctest.Test(t, func(t *testing.T) {
		reg, _ := startRunner(t, Config{ReapInterval: time.Second})
		register(t, reg, `{"ID":"gone","Name":"x","Check":{"TCP":"`+dead+`","Interval":"10s","DeregisterCriticalServiceAfter":"90s"}}`)
		register(t, reg, `{"ID":"floor","Name":"x","Check":{"TCP":"`+dead+`","Interval":"10s","DeregisterCriticalServiceAfter":"1s"}}`)
		register(t, reg, `{"ID":"fine","Name":"x","Check":{"HTTP":"`+s.URL+`","Interval":"10s","DeregisterCriticalServiceAfter":"90s"}}`)
		has := func(id string) bool {
			_, ok := reg.Snapshot().NodeService("node1", id)
			return ok
		}
		// The checks are critical from their registration (Consul's
		// initial status); the reaper runs every second here.
		after(59 * time.Second)
		if !has("gone") || !has("floor") || !has("fine") {
			t.Fatal("a service was deregistered too early")
		}
		after(3 * time.Second) // 1s is raised to Consul's floor of 1m
		if has("floor") || !has("gone") {
			t.Errorf("after 62s: floor=%v gone=%v", has("floor"), has("gone"))
		}
		after(30 * time.Second)
		if has("gone") || !has("fine") {
			t.Errorf("after 92s: gone=%v fine=%v", has("gone"), has("fine"))
		}
		if c := checkEntry(reg, "service:gone"); c != nil {
			t.Errorf("the check outlived its service: %+v", c)
		}
	})
}

func TestChecksFollowTheCatalog(t *testing.T) {
	s := newFlipServer(t)
	other := newFlipServer(t)
	synctest.Test(t, func(t *testing.T) {
		reg, _ := startRunner(t, Config{})
		register(t, reg, `{"ID":"web1","Name":"web","Check":{"HTTP":"`+s.URL+`","Interval":"10s"}}`)
		after(30 * time.Second)
		if n := s.hits.Load(); n != 3 {
			t.Errorf("%d probes in 30s at a 10s interval, want 3", n)
		}
		// A new definition replaces the running check.
		register(t, reg, `{"ID":"web1","Name":"web","Check":{"HTTP":"`+other.URL+`","Interval":"10s"}}`)
		synctest.Wait()
		before := s.hits.Load()
		after(30 * time.Second)
		if s.hits.Load() != before || other.hits.Load() != 3 {
			t.Errorf("after a new definition: old target %d more probes, new target %d", s.hits.Load()-before, other.hits.Load())
		}
		// Deregistration stops it.
		if err := reg.DeregisterService("web1"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		before = other.hits.Load()
		after(time.Minute)
		if other.hits.Load() != before {
			t.Error("a deregistered check is still probed")
		}
		// Standalone checks run too.
		if err := reg.RegisterCheck(registry.Check{CheckID: "mem", Name: "mem", Status: registry.StatusCritical,
			Definition: registry.CheckDefinition{HTTP: s.URL, Interval: registry.Duration(10 * time.Second)}}, registry.SourceAPI); err != nil {
			t.Fatal(err)
		}
		after(10 * time.Second)
		wantCheck(t, reg, "mem", registry.StatusPassing, "200 OK")
	})
}

// An output-only change is published at most once per OutputUpdateInterval;
// a status change at once.
func TestOutputOnlyChangesAreDeferred(t *testing.T) {
	s := newFlipServer(t)
	synctest.Test(t, func(t *testing.T) {
		reg, _ := startRunner(t, Config{OutputUpdateInterval: time.Minute})
		setBody := func(b string) { s.body.Store(&b) }
		setBody("v1")
		register(t, reg, `{"ID":"web1","Name":"web","Check":{"HTTP":"`+s.URL+`","Interval":"10s"}}`)
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusPassing, "Output: v1")
		idx := reg.Snapshot().Index()
		setBody("v2")
		after(50 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusPassing, "Output: v1")
		if reg.Snapshot().Index() != idx {
			t.Error("an output-only change was published before OutputUpdateInterval")
		}
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusPassing, "Output: v2")
		setBody("v3")
		s.code.Store(500)
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusCritical, "Output: v3")
	})
}

func TestScriptChecks(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			reg, _ := startRunner(t, Config{EnableScriptChecks: enabled})
			register(t, reg, `{"ID":"s1","Name":"s","Check":{"Args":["/bin/sh","-c","echo fine"],"Interval":"10s"}}`)
			after(10 * time.Second)
			if enabled {
				wantCheck(t, reg, "service:s1", registry.StatusPassing, "fine")
			} else {
				wantCheck(t, reg, "service:s1", registry.StatusCritical, "script checks are disabled")
			}
		})
	}
}

// Checks registered together spread over their interval instead of firing
// at once.
func TestJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg, r := startRunner(t, Config{})
		var mu sync.Mutex
		first := map[string]time.Duration{}
		t0 := time.Now()
		r.observe = func(id string, scheduled, started time.Time) {
			mu.Lock()
			defer mu.Unlock()
			if _, ok := first[id]; !ok {
				first[id] = started.Sub(t0)
			}
		}
		dead := closedPort(t)
		for i := range 100 {
			register(t, reg, `{"ID":"s`+strconv.Itoa(i)+`","Name":"s","Check":{"TCP":"`+dead+`","Interval":"10s"}}`)
		}
		after(10*time.Second + minSyncGap) // registrations after the first arrive in one batch
		mu.Lock()
		defer mu.Unlock()
		var buckets [10]int
		n := 0
		for _, d := range first {
			buckets[min(int(d/time.Second), 9)]++
			n++
		}
		if n != 100 {
			t.Fatalf("%d first probes in the first interval, want 100", n)
		}
		for i, b := range buckets {
			if b > 30 {
				t.Errorf("%d of 100 checks started in second %d: %v", b, i, buckets)
			}
		}
	})
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without a catalog")
	}
	r := testRunner(t, DefaultConfig())
	if r.cfg.DefaultTimeout != 10*time.Second || r.cfg.OutputMaxSize != 4096 {
		t.Errorf("defaults: %+v", r.cfg)
	}
}
