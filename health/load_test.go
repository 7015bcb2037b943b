package health

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pier-dev/pier/registry"
)

// loadRun is what one run of many HTTP checks against one loopback server
// saw: how late each probe started against its schedule, and how often each
// check was probed.
type loadRun struct {
	late     []time.Duration // sorted
	perCheck map[string]int
	passing  int
	hits     int64
}

func (l *loadRun) pct(p float64) time.Duration {
	return l.late[min(len(l.late)-1, int(float64(len(l.late))*p))]
}

func (l *loadRun) most() int {
	most := 0
	for _, k := range l.perCheck {
		most = max(most, k)
	}
	return most
}

// registerHTTPChecks registers n HTTP checks at interval against url, ten
// per service.
func registerHTTPChecks(tb testing.TB, reg *registry.Registry, n int, url string, interval time.Duration) {
	tb.Helper()
	const perService = 10
	for i := range n / perService {
		id := fmt.Sprintf("svc%d", i)
		checks := make([]registry.Check, perService)
		for j := range checks {
			checks[j] = registry.Check{
				CheckID: fmt.Sprintf("%s:%d", id, j), Name: "http", Status: registry.StatusCritical,
				Definition: registry.CheckDefinition{HTTP: url + "/" + id, Interval: registry.Duration(interval)},
			}
		}
		if err := reg.RegisterService(registry.Service{ID: id, Name: "load"}, checks, registry.SourceAPI); err != nil {
			tb.Fatal(err)
		}
	}
}

// runHTTPChecks runs n HTTP checks at interval for runFor against srv and
// says what it saw. wait lets time pass: a real sleep in the benchmark,
// fake time in a synctest bubble.
func runHTTPChecks(tb testing.TB, n int, interval, runFor time.Duration, srv *httptest.Server, hits *atomic.Int64, wait func(time.Duration)) *loadRun {
	tb.Helper()
	reg := newCatalog(tb)
	registerHTTPChecks(tb, reg, n, srv.URL, interval)
	r, err := New(Config{Catalog: reg})
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	run := &loadRun{late: make([]time.Duration, 0, 2*n), perCheck: make(map[string]int, n)}
	r.observe = func(id string, scheduled, started time.Time) {
		mu.Lock()
		run.late = append(run.late, started.Sub(scheduled))
		run.perCheck[id]++
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	hits0 := hits.Load()
	go func() { done <- r.Run(ctx) }()
	wait(runFor)
	for _, c := range reg.Snapshot().AllNodeChecks("node1") {
		if c.Status == registry.StatusPassing && c.Definition.HTTP != "" {
			run.passing++
		}
	}
	cancel()
	if err := <-done; err != nil {
		tb.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	run.hits = hits.Load() - hits0
	slices.Sort(run.late)
	return run
}

func countingServer(tb testing.TB) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
	}))
	tb.Cleanup(srv.Close)
	return srv, &hits
}

// TestManyHTTPChecks runs 1,000 HTTP checks at a 10s interval against one
// real loopback server, in fake time (the probes' network I/O holds fake
// time still while it lasts, so the machine's load cannot make a probe
// late): every check is probed in its first interval and again one interval
// later, never more often than its schedule allows, and passes. How late
// checks run in real time under load is BenchmarkHTTPChecksOnTime's to
// measure.
func TestManyHTTPChecks(t *testing.T) {
	srv, hits := countingServer(t)
	const n, interval = 1000, 10 * time.Second
	synctest.Test(t, func(t *testing.T) {
		runFor := 2*interval + minSyncGap // registrations after the first arrive in one batch
		run := runHTTPChecks(t, n, interval, runFor, srv, hits, func(d time.Duration) {
			time.Sleep(d)
			synctest.Wait()
		})
		least := n
		for _, k := range run.perCheck {
			least = min(least, k)
		}
		if len(run.perCheck) != n || least < 2 || run.most() > 3 {
			t.Errorf("%d of %d checks probed, between %d and %d times each; want every one 2 or 3 times in %v",
				len(run.perCheck), n, least, run.most(), runFor)
		}
		if run.passing != n || run.hits != int64(len(run.late)) {
			t.Errorf("%d of %d checks passing; %d requests served for %d probes", run.passing, n, run.hits, len(run.late))
		}
		t.Logf("%d probes in %v of fake time; lateness p50 %v, max %v", len(run.late), runFor, run.pct(0.5), run.late[len(run.late)-1])
		if late := run.late[len(run.late)-1]; late > minSyncGap {
			t.Errorf("a probe started %v after its schedule in fake time", late)
		}
	})
}

// BenchmarkHTTPChecksOnTime runs 10,000 HTTP checks at a 10s interval
// against one loopback server for 15s of real time per iteration (run it
// with -benchtime=1x) and reports how late probes start against their
// schedule (p50, p99 and max, in ms) and the CPU the checker and the
// server use together, in % of one core. It depends on the machine's load,
// so it is a benchmark and not a test: on a quiet machine p99 is a few
// milliseconds.
//
//	go test -run '^$' -bench HTTPChecksOnTime -benchtime=1x ./health
func BenchmarkHTTPChecksOnTime(b *testing.B) {
	const n, interval, runFor = 10000, 10 * time.Second, 15 * time.Second
	srv, hits := countingServer(b)
	var late []time.Duration
	var cpu time.Duration
	for range b.N {
		cpu0 := cpuTime()
		run := runHTTPChecks(b, n, interval, runFor, srv, hits, time.Sleep)
		cpu += cpuTime() - cpu0
		if len(run.perCheck) != n || run.passing != n {
			b.Errorf("%d of %d checks probed, %d passing", len(run.perCheck), n, run.passing)
		}
		late = append(late, run.late...)
	}
	slices.Sort(late)
	all := &loadRun{late: late}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(all.pct(0.50)), "p50-late-ms")
	b.ReportMetric(ms(all.pct(0.99)), "p99-late-ms")
	b.ReportMetric(ms(late[len(late)-1]), "max-late-ms")
	b.ReportMetric(100*cpu.Seconds()/(runFor.Seconds()*float64(b.N)), "cpu-%")
	b.ReportMetric(float64(len(late))/float64(b.N), "probes/op")
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
