package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/lb"
	"github.com/pier-dev/pier/registry"
)

// Failover of a route to other datacenters: a route with a failover
// sends to its local pool while that has a backend passive health has not
// taken out, and otherwise to the first datacenter of its failover order
// that has one: the nearest N other datacenters (nearest), then the listed
// ones (datacenters) not already in. The pools of those datacenters are
// kept warm by RunFailover, which holds one blocking query per datacenter
// and service on that datacenter's health endpoint (?dc=, ?index=), so a
// change there reaches the pool one WAN round trip later and the switch
// costs nothing on the request path; the route comes back to its local
// instances on the first request after one of them is healthy again.

// Failover is a route's failover: `failover: {nearest: 2}` or
// `failover: {datacenters: [dc2, dc3]}` (both may be given).
type Failover struct {
	Nearest     int      `json:"nearest"`     // the N nearest other datacenters, nearest first
	Datacenters []string `json:"datacenters"` // then these, in order
}

func (f *Failover) validate(r *Route) error {
	if f.Nearest < 0 {
		return fmt.Errorf("route %s%s: failover.nearest %d: must not be negative", r.Host, r.Path, f.Nearest)
	}
	if f.Nearest == 0 && len(f.Datacenters) == 0 {
		return fmt.Errorf("route %s%s: failover: give nearest (a count) or datacenters (a list)", r.Host, r.Path)
	}
	for _, dc := range f.Datacenters {
		if dc == "" || strings.ContainsAny(dc, " \t/?&#.") {
			return fmt.Errorf("route %s%s: failover.datacenters: %q is not a datacenter name", r.Host, r.Path, dc)
		}
	}
	return nil
}

// order answers the datacenters f tries, given the others nearest first.
func (f *Failover) order(others []string) []string {
	out := make([]string, 0, f.Nearest+len(f.Datacenters))
	for i, dc := range others {
		if i >= f.Nearest {
			break
		}
		out = append(out, dc)
	}
	for _, dc := range f.Datacenters {
		if !slices.Contains(out, dc) {
			out = append(out, dc)
		}
	}
	return out
}

// FailoverSource is what failover needs of the agent (registry/api's
// Reader has these methods).
type FailoverSource interface {
	// Datacenters answers every datacenter, this one first, then the
	// others nearest first.
	Datacenters(ctx context.Context) ([]string, error)
	// WatchInstances answers every instance of service in dc, with its
	// checks, once their index has passed index (0: at once) or wait has
	// passed, and the index they have: a blocking query.
	WatchInstances(ctx context.Context, dc, service string, index uint64, wait time.Duration) ([]registry.Instance, uint64, error)
}

// failover is the proxy's part of it: the remote pools, the watches that
// fill them and, per service of a route with a failover, the datacenters
// to try in order.
type failover struct {
	src     FailoverSource
	every   time.Duration // how often the routes and the datacenters' order are read again (both local)
	retry   time.Duration // the first wait after a datacenter failed to answer; it doubles up to maxRetry
	remote  *lb.Remote
	targets atomic.Pointer[map[string][]string] // service → datacenters in order

	mu      sync.Mutex
	wait    time.Duration                        // a blocking query's wait
	margin  time.Duration                        // how long past wait (and its jitter) a query may take before it counts as failed
	insts   map[lb.RemoteKey][]registry.Instance // each watch's newest answer; a key without one has no pool
	watches map[lb.RemoteKey]*watch
}

// watch is one datacenter's and service's goroutine.
type watch struct {
	k      lb.RemoteKey
	cancel context.CancelFunc
}

// maxRetry caps the wait before a datacenter that does not answer is asked
// again.
const maxRetry = 30 * time.Second

func newFailover(src FailoverSource, every, wait time.Duration, bal *lb.Balancer) *failover {
	f := &failover{src: src, every: every, wait: wait, retry: time.Second, margin: 10 * time.Second, remote: bal.NewRemote(),
		insts: map[lb.RemoteKey][]registry.Instance{}, watches: map[lb.RemoteKey]*watch{}}
	f.targets.Store(&map[string][]string{})
	return f
}

// failoverPool answers the pool a route with a failover sends to when its
// local one is not usable, and the datacenter it is of; nil when no
// datacenter has one.
func (p *Proxy) failoverPool(r *route) (*lb.Pool, string) {
	for _, dc := range (*p.fo.targets.Load())[r.Service] {
		if pl := p.fo.remote.Pool(lb.RemoteKey{Datacenter: dc, Service: r.Service}); pl.Usable() {
			return pl, dc
		}
	}
	return nil, ""
}

// servingPool is pool with failover: the local pool while it is usable,
// else the failover's, else the local one (which answers 502 or 503).
func (p *Proxy) servingPool(r *route, local *lb.Pool) (*lb.Pool, string) {
	if r.Failover == nil || p.fo == nil || local.Usable() {
		return local, ""
	}
	if pl, dc := p.failoverPool(r); pl != nil {
		return pl, dc
	}
	return local, ""
}

// RunFailover keeps the failover pools of the routes up to date until ctx
// ends: a watch (a goroutine holding a blocking query) per datacenter and
// service that a route may fail over to, started and stopped as the routes
// and the datacenters' order change. Without a FailoverSource it only
// waits. It returns once every watch has.
func (p *Proxy) RunFailover(ctx context.Context) error {
	if p.fo == nil {
		<-ctx.Done()
		return nil
	}
	f := p.fo
	var wg sync.WaitGroup
	defer func() {
		f.mu.Lock()
		for k, w := range f.watches {
			w.cancel()
			delete(f.watches, k)
		}
		f.mu.Unlock()
		wg.Wait()
	}()
	// While a route with a failover has no datacenter to try (an agent
	// that has not found its servers yet, a WAN pool still meeting), the
	// plan is made again sooner: from 100ms, doubling up to every.
	soon := 100 * time.Millisecond
	for {
		next := f.every
		if !p.planFailover(ctx, &wg) {
			next, soon = min(soon, f.every), min(2*soon, f.every)
		} else {
			soon = 100 * time.Millisecond
		}
		if !sleepCtx(ctx, next) {
			return nil
		}
	}
}

// planFailover reads the routes and the datacenters' order, and starts a
// watch for each datacenter and service the routes need that has none,
// stopping those no route needs any more (their pools go with them). It
// answers false when the datacenters could not be listed or a route with a
// failover has none to try.
func (p *Proxy) planFailover(ctx context.Context, wg *sync.WaitGroup) bool {
	f := p.fo
	rt := p.syncRoutes()
	dcs, err := f.src.Datacenters(ctx)
	if err != nil || len(dcs) == 0 {
		// The servers are out of reach for now: the watches go on as they
		// are (each fails on its own if its datacenter does not answer).
		p.log.Debug("failover: listing datacenters", "err", err)
		return false
	}
	others := dcs[1:]
	targets := map[string][]string{}
	need := map[lb.RemoteKey]bool{}
	complete := true
	for _, r := range rt.all {
		if r.Failover == nil {
			continue
		}
		order := r.Failover.order(others)
		complete = complete && len(order) > 0
		targets[r.Service] = order
		for _, dc := range order {
			need[lb.RemoteKey{Datacenter: dc, Service: r.Service}] = true
		}
	}
	f.mu.Lock()
	changed := false
	for k, w := range f.watches {
		if !need[k] {
			w.cancel()
			delete(f.watches, k)
			if _, had := f.insts[k]; had {
				delete(f.insts, k)
				changed = true
			}
		}
	}
	for k := range need {
		if _, ok := f.watches[k]; ok {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		w := &watch{k: k, cancel: cancel}
		f.watches[k] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.watchFailover(wctx, w)
		}()
	}
	if changed {
		f.remote.Set(f.insts)
	}
	f.mu.Unlock()
	f.targets.Store(&targets)
	return complete
}

// watchFailover keeps k's pool up to date until ctx ends: a blocking query
// after another, each bounded (a datacenter cut off mid-query fails it at
// the bound rather than holding it for ever). A datacenter that does not
// answer has no pool, so failover skips it, and is asked again after a
// wait that doubles from retry up to maxRetry, with jitter.
func (p *Proxy) watchFailover(ctx context.Context, w *watch) {
	f, k := p.fo, w.k
	var index uint64
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		// The server holds a query up to wait plus its jitter (wait/16),
		// and another datacenter's answer may take its RPC hold on top.
		f.mu.Lock()
		wait, margin := f.wait, f.margin // a test may change them
		f.mu.Unlock()
		qctx, cancel := context.WithTimeout(ctx, wait+wait/16+margin)
		start := time.Now()
		insts, idx, err := f.src.WatchInstances(qctx, k.Datacenter, k.Service, index, wait)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			p.log.Debug("failover: instances of another datacenter", "dc", k.Datacenter, "service", k.Service, "err", err)
			f.store(w, nil, false)
			backoff = min(max(2*backoff, f.retry), maxRetry)
			index = 0
			if !sleepCtx(ctx, backoff/2+rand.N(backoff/2+1)) {
				return
			}
			continue
		}
		backoff = 0
		f.store(w, insts, true)
		if idx == index && time.Since(start) < wait/4 && !sleepCtx(ctx, f.every) {
			return // a server that does not hold the query is not asked in a loop
		}
		// An index that went back (a restored or new server) starts over,
		// as Consul's rules for blocking queries say.
		if idx < index {
			idx = 0
		}
		index = max(idx, 1)
	}
}

// store sets the instances of w's key (ok false: it has no pool) and
// rebuilds the remote pools.
func (f *failover) store(w *watch, insts []registry.Instance, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := w.k
	if f.watches[k] != w {
		return // stopped meanwhile (and maybe started again): not its pool any more
	}
	if ok {
		f.insts[k] = insts
	} else if _, had := f.insts[k]; had {
		delete(f.insts, k)
	} else {
		return
	}
	f.remote.Set(f.insts)
}

// sleepCtx waits d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
