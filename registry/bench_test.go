package registry

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// benchCatalog returns a registry holding n services of this node, each with
// a TTL check, spread over n/10 names (10 instances a name). They come from
// config, so that nothing is written to a data dir while filling it.
func benchCatalog(b *testing.B, n int, dir string) *Registry {
	b.Helper()
	r, err := New(rtConfig(dir))
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		s, cs := benchService(i, 0)
		if err := r.RegisterService(s, cs, SourceConfig); err != nil {
			b.Fatal(err)
		}
	}
	return r
}

// benchService is instance i (name svc-<i/10>) in version v, with one check.
func benchService(i, v int) (Service, []Check) {
	id := fmt.Sprintf("svc-%d-%d", i/10, i%10)
	name := fmt.Sprintf("svc-%d", i/10)
	s := Service{
		ID: id, Name: name, Tags: []string{"v" + fmt.Sprint(v%3), "prod"},
		Address: "10.1.0.1", Port: 1024 + i%50000, Weights: Weights{1, 1},
		Meta: map[string]string{"version": fmt.Sprint(v)},
	}
	c := Check{
		CheckID: "service:" + id, Name: "Service '" + name + "' check", Status: StatusCritical,
		ServiceID: id, ServiceName: name, Definition: CheckDefinition{TTL: Duration(30 * time.Second)},
	}
	return s, []Check{c}
}

// benchVersions prepares two changed versions of the first n services, so
// that the benchmark loop measures the registry rather than building its
// input: call i gives service i%n, in a version other than its current one.
func benchVersions(n int) func(i int) (Service, []Check) {
	type reg struct {
		s  Service
		cs []Check
	}
	var vs [2][]reg
	for v := range vs {
		for i := range n {
			s, cs := benchService(i, v+1)
			vs[v] = append(vs[v], reg{s, cs})
		}
	}
	return func(i int) (Service, []Check) {
		x := vs[(i/n)%2][i%n]
		return x.s, x.cs
	}
}

// BenchmarkRegister re-registers (with a change) services of a catalog that
// already holds the given number of services, so its size stays put.
func BenchmarkRegister(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			r := benchCatalog(b, n, "")
			next := benchVersions(n)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s, cs := next(i)
				if err := r.RegisterService(s, cs, SourceAPI); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// With a data dir every API registration is one fsynced file.
	b.Run("services=10000/persist", func(b *testing.B) {
		r := benchCatalog(b, 10_000, b.TempDir())
		next := benchVersions(1000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			s, cs := next(i)
			if err := r.RegisterService(s, cs, SourceAPI); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRegisterDeregister adds and removes one service in a catalog of
// 10,000.
func BenchmarkRegisterDeregister(b *testing.B) {
	r := benchCatalog(b, 10_000, "")
	s, cs := benchService(20_000, 0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := r.RegisterService(s, cs, SourceAPI); err != nil {
			b.Fatal(err)
		}
		if err := r.DeregisterService(s.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateCheck flips one check of a catalog of 10,000 services.
func BenchmarkUpdateCheck(b *testing.B) {
	r := benchCatalog(b, 10_000, "")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st := StatusPassing
		if i%2 == 1 {
			st = StatusCritical
		}
		if err := r.UpdateCheck("service:svc-500-5", st, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServiceInstances reads the 10 instances of one name, with their
// node and checks, out of 10,000 services.
func BenchmarkServiceInstances(b *testing.B) {
	r := benchCatalog(b, 10_000, "")
	snap := r.Snapshot()
	if got := len(snap.ServiceInstances("svc-500")); got != 10 {
		b.Fatalf("%d instances, want 10", got)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(snap.ServiceInstances("svc-500")) != 10 {
			b.Fatal("lost instances")
		}
	}
}

// BenchmarkServiceNames lists the 1,000 names of 10,000 services (what
// /v1/catalog/services does).
func BenchmarkServiceNames(b *testing.B) {
	r := benchCatalog(b, 10_000, "")
	snap := r.Snapshot()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(snap.ServiceNames()) != 1001 {
			b.Fatal("lost names")
		}
	}
}

// BenchmarkSnapshotLoad is what every reader pays: load the current snapshot
// and look up one name's index, from every core at once.
func BenchmarkSnapshotLoad(b *testing.B) {
	r := benchCatalog(b, 10_000, "")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s := r.Snapshot()
			if s.ServiceIndex("svc-500") == 0 {
				b.Error("index 0")
				return
			}
		}
	})
}

// benchWaiter is one blocking query: wait for the snapshot to change, load
// the new one and compute its service's index, note the time.
func benchWaiter(r *Registry, snap *Snapshot, name string, at *time.Time, idx *uint64, done *sync.WaitGroup) {
	<-snap.Changed()
	next := r.Snapshot()
	*idx = next.ServiceIndex(name)
	*at = time.Now()
	done.Done()
}

// benchStackBuf is reused by benchParked so that polling makes no garbage
// for the measured part to collect.
var benchStackBuf = make([]byte, 1<<20)

// benchParked waits until n goroutines are parked inside fn (a function
// name as runtime stacks print it), so that a measurement starts with every
// waiter really asleep rather than still on its way to the channel.
func benchParked(b *testing.B, fn string, n int) {
	b.Helper()
	buf := benchStackBuf
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := runtime.Stack(buf, true)
		if m == len(buf) {
			buf = make([]byte, 2*len(buf))
			benchStackBuf = buf
			continue
		}
		parked := 0
		for _, g := range bytes.Split(buf[:m], []byte("\n\n")) {
			head, _, _ := strings.Cut(string(g), "\n")
			if (strings.Contains(head, "[chan receive") || strings.Contains(head, "[select")) && bytes.Contains(g, []byte(fn)) {
				parked++
			}
		}
		if parked >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d goroutines parked in %s", parked, n, fn)
		}
		runtime.Gosched()
	}
}

// BenchmarkWake: 10,000 services, 100 goroutines blocked on the snapshot's
// Changed as the API's blocking queries are; one registration; time until
// all of them have loaded the new snapshot. The goal is under 50ms.
func BenchmarkWake(b *testing.B) {
	const waiters = 100
	r := benchCatalog(b, 10_000, "")
	var total, worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		snap := r.Snapshot()
		var done sync.WaitGroup
		at := make([]time.Time, waiters)
		idx := make([]uint64, waiters)
		done.Add(waiters)
		for w := range waiters {
			go benchWaiter(r, snap, fmt.Sprintf("svc-%d", w), &at[w], &idx[w], &done)
		}
		benchParked(b, "registry.benchWaiter(", waiters)
		s, cs := benchService(i%10_000, i+1)
		b.StartTimer()

		start := time.Now()
		if err := r.RegisterService(s, cs, SourceAPI); err != nil {
			b.Fatal(err)
		}
		done.Wait()

		b.StopTimer()
		var last time.Time
		for w := range waiters {
			if at[w].After(last) {
				last = at[w]
			}
			if idx[w] == 0 {
				b.Fatalf("waiter %d saw index 0", w)
			}
		}
		d := last.Sub(start)
		total += d
		worst = max(worst, d)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/wake-all")
	b.ReportMetric(float64(worst.Nanoseconds()), "ns/wake-all-max")
}
