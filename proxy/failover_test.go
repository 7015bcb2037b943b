package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

// A route's failover order: the nearest N others, then the listed ones not
// in yet; and the mistakes Validate names.
func TestFailoverOrder(t *testing.T) {
	others := []string{"dc2", "dc3", "dc4"}
	for _, c := range []struct {
		f    Failover
		want []string
	}{
		{Failover{Nearest: 2}, []string{"dc2", "dc3"}},
		{Failover{Nearest: 9}, []string{"dc2", "dc3", "dc4"}},
		{Failover{Datacenters: []string{"dc4", "dc9"}}, []string{"dc4", "dc9"}},
		{Failover{Nearest: 1, Datacenters: []string{"dc2", "dc4"}}, []string{"dc2", "dc4"}},
	} {
		if got := c.f.order(others); !slices.Equal(got, c.want) {
			t.Errorf("%+v: %v, want %v", c.f, got, c.want)
		}
	}
	for _, c := range []struct {
		f    Failover
		want string
	}{
		{Failover{Nearest: -1}, "failover.nearest -1"},
		{Failover{}, "give nearest"},
		{Failover{Datacenters: []string{"dc 2"}}, "failover.datacenters"},
		{Failover{Datacenters: []string{""}}, "failover.datacenters"},
	} {
		r := Route{Path: "/", Service: "web", Failover: &c.f}
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.f, err, c.want)
		}
	}
	ok := Route{Path: "/", Service: "web", Failover: &Failover{Nearest: 2, Datacenters: []string{"dc3"}}}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}

// fakeDC is dc2 as a FailoverSource sees it: instances at an index, held
// queries woken by a change, and two failures: down (an error at once) and
// cut (a query that hangs until it is given up).
type fakeDC struct {
	mu      sync.Mutex
	insts   []registry.Instance
	index   uint64
	changed chan struct{}
	mode    string // "", "down" or "cut"
	calls   int
	holding atomic.Int32 // queries held in a cut
}

func (f *fakeDC) Datacenters(context.Context) ([]string, error) { return []string{"dc1", "dc2"}, nil }

func (f *fakeDC) WatchInstances(ctx context.Context, dc, service string, index uint64, wait time.Duration) ([]registry.Instance, uint64, error) {
	f.mu.Lock()
	f.calls++
	mode, ch, cur, insts := f.mode, f.changed, f.index, f.insts
	f.mu.Unlock()
	switch {
	case dc != "dc2" || service != "web":
		return nil, 0, fmt.Errorf("asked for %s in %s", service, dc)
	case mode == "down":
		return nil, 0, errors.New("dc2 does not answer")
	case mode == "cut":
		f.holding.Add(1)
		defer f.holding.Add(-1)
		<-ctx.Done()
		return nil, 0, ctx.Err()
	}
	if index >= cur {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
		f.mu.Lock()
		cur, insts = f.index, f.insts
		f.mu.Unlock()
	}
	return insts, cur, nil
}

// set changes dc2's instances (and its failure mode), waking held queries.
func (f *fakeDC) set(mode string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.insts = nil
	for i, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		pn, _ := strconv.Atoi(port)
		f.insts = append(f.insts, registry.Instance{Node: &registry.NodeEntry{Node: registry.Node{Name: "n-dc2", Address: host}},
			Service: &registry.ServiceEntry{Node: "n-dc2", Service: registry.Service{ID: "web" + strconv.Itoa(i), Name: "web", Address: host, Port: pn,
				Weights: registry.Weights{Passing: 1, Warning: 1}}}})
	}
	f.index++
	f.mode = mode
	if f.changed != nil {
		close(f.changed)
	}
	f.changed = make(chan struct{})
}

// TestFailoverWatch: the failover pools follow dc2 by blocking queries,
// not by polling: with a wait of a minute and the routes read once, a
// registration and a deregistration in dc2 reach the front door while a
// query is held; a dc2 that answers errors loses its pool and is asked
// again with backoff, not in a loop; a query held across a cut is given up
// at its bound and the pool goes; and stopping the proxy ends every watch,
// a held one included (goleak in TestMain).
func TestFailoverWatch(t *testing.T) {
	dc2 := &fakeDC{}
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "dc2") }))
	defer b.Close()
	bAddr := strings.TrimPrefix(b.URL, "http://")
	dc2.set("", bAddr)
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "web", Failover: &Failover{Nearest: 1}}}
		c.Failover, c.FailoverEvery, c.FailoverWait = dc2, time.Hour, time.Minute
	})
	e.p.fo.retry = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.p.RunFailover(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("RunFailover did not return 10s after its context ended")
			}
		}
	}
	defer stop()
	serves := func(want string) func() bool {
		return func() bool {
			code, body, _ := e.do("GET", "", "/", nil)
			return want == "" && code >= 500 || code == 200 && body == want
		}
	}
	eventually.True(t, 10*time.Second, "the front door serves dc2", serves("dc2"))
	dc2.set("")
	eventually.True(t, 10*time.Second, "dc2's deregistration reaches the front door within its held query", serves(""))
	dc2.set("", bAddr)
	eventually.True(t, 10*time.Second, "dc2's registration reaches the front door within its held query", serves("dc2"))

	// dc2 answers errors: no pool, and it is asked again with backoff.
	dc2.mu.Lock()
	before := dc2.calls
	dc2.mu.Unlock()
	dc2.set("down", bAddr)
	eventually.True(t, 10*time.Second, "the pool of a dc2 that does not answer is gone", serves(""))
	time.Sleep(500 * time.Millisecond) // backoff from 20ms doubling: about 5 tries, not thousands
	dc2.mu.Lock()
	tries := dc2.calls - before
	dc2.mu.Unlock()
	if tries > 12 {
		t.Errorf("%d queries to a failing dc2 in 500ms: not backing off", tries)
	}
	dc2.set("", bAddr)
	eventually.True(t, 30*time.Second, "dc2 serves again once it answers", serves("dc2"))

	// A cut: the next query hangs; it is given up at its bound.
	e.p.fo.mu.Lock()
	e.p.fo.margin = 100 * time.Millisecond
	e.p.fo.wait = 200 * time.Millisecond
	e.p.fo.mu.Unlock()
	dc2.set("cut")
	eventually.True(t, 10*time.Second, "a query is held across the cut", func() bool { return dc2.holding.Load() > 0 })
	eventually.True(t, 10*time.Second, "the pool goes once the held query is given up", serves(""))
	stop()
	if n := dc2.holding.Load(); n != 0 {
		t.Errorf("%d queries still held after RunFailover returned", n)
	}
}
