package health

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

// TestManyHTTPChecksOnTime runs 10,000 HTTP checks at a 10s interval
// against one loopback server, in real time, and measures how late each
// probe starts against its schedule. Under -race (which slows everything
// several times) or -short it runs 1,000 checks. It is bounded: 15s of
// checking (12s for the small run), whatever the machine.
func TestManyHTTPChecksOnTime(t *testing.T) {
	n, runFor := 10000, 15*time.Second
	if raceEnabled || testing.Short() {
		n, runFor = 1000, 12*time.Second
	}
	const interval = 10 * time.Second
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
	}))
	defer srv.Close()

	rcfg := registry.DefaultConfig()
	rcfg.NodeName = "node1"
	rcfg.Address = "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	const perService = 10
	for i := range n / perService {
		id := fmt.Sprintf("svc%d", i)
		checks := make([]registry.Check, perService)
		for j := range checks {
			checks[j] = registry.Check{
				CheckID: fmt.Sprintf("%s:%d", id, j), Name: "http", Status: registry.StatusCritical,
				Definition: registry.CheckDefinition{HTTP: srv.URL + "/" + id, Interval: registry.Duration(interval)},
			}
		}
		if err := reg.RegisterService(registry.Service{ID: id, Name: "load"}, checks, registry.SourceAPI); err != nil {
			t.Fatal(err)
		}
	}

	r, err := New(Config{Catalog: reg})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	late := make([]time.Duration, 0, 2*n)
	perCheck := make(map[string]int, n)
	r.observe = func(id string, scheduled, started time.Time) {
		mu.Lock()
		late = append(late, started.Sub(scheduled))
		perCheck[id]++
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cpu0 := cpuTime()
	start := time.Now()
	go func() { done <- r.Run(ctx) }()
	time.Sleep(runFor) // a bounded run in real time, not a wait for an event
	goroutines := runtime.NumGoroutine()
	passing := 0
	for _, c := range reg.Snapshot().AllNodeChecks("node1") {
		if c.Status == registry.StatusPassing && c.Definition.HTTP != "" {
			passing++
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(start) - runFor
	cpu := cpuTime() - cpu0

	mu.Lock()
	defer mu.Unlock()
	slices.Sort(late)
	pct := func(p float64) time.Duration { return late[min(len(late)-1, int(float64(len(late))*p))] }
	t.Logf("%d HTTP checks at %v for %v: %d probes, %d requests served, %d passing at the end, %d goroutines, stopped in %v",
		n, interval, runFor, len(late), hits.Load(), passing, goroutines, stopped.Round(time.Millisecond))
	most := 0
	for _, k := range perCheck {
		most = max(most, k)
	}
	t.Logf("%d checks probed, at most %d times each", len(perCheck), most)
	t.Logf("CPU (checker and the test's server together): %v in %v, %.0f%% of one core",
		cpu.Round(time.Millisecond), runFor, 100*cpu.Seconds()/runFor.Seconds())
	t.Logf("lateness against schedule: p50 %v  p90 %v  p99 %v  p99.9 %v  max %v",
		pct(0.50), pct(0.90), pct(0.99), pct(0.999), late[len(late)-1])

	// Every check ran in its first interval, none more often than its
	// schedule allows, and every one passes.
	if len(perCheck) != n || most > int(runFor/interval)+1 {
		t.Errorf("%d of %d checks probed, one of them %d times", len(perCheck), n, most)
	}
	if passing != n {
		t.Errorf("%d of %d checks passing", passing, n)
	}
	// Generous bounds, because other work shares the machine (under -race
	// with a load average of 10, p99 reached 4s): a scheduler that cannot
	// keep up drifts by whole intervals. On a quiet machine p99 is a few
	// milliseconds (see the README).
	if p50, p99 := pct(0.50), pct(0.99); p50 > 2*time.Second || p99 > interval/2 {
		t.Errorf("lateness p50 %v, p99 %v: checks do not run on time", p50, p99)
	}
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
