package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"
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
// kept warm by RunFailover, which asks the FailoverSource for their
// healthy instances every FailoverEvery, so the switch costs nothing on
// the request path; the route comes back to its local instances on the
// first request after one of them is healthy again.

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
// Server has these methods).
type FailoverSource interface {
	// Datacenters answers every datacenter, this one first, then the
	// others nearest first.
	Datacenters(ctx context.Context) ([]string, error)
	// Instances answers every instance of service in dc, with its checks.
	Instances(ctx context.Context, dc, service, tag string) ([]registry.Instance, error)
}

// failover is the proxy's part of it: the remote pools and, per service
// of a route with a failover, the datacenters to try in order.
type failover struct {
	src     FailoverSource
	every   time.Duration
	remote  *lb.Remote
	targets atomic.Pointer[map[string][]string] // service → datacenters in order
}

func newFailover(src FailoverSource, every time.Duration, bal *lb.Balancer) *failover {
	f := &failover{src: src, every: every, remote: bal.NewRemote()}
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
// ends; without a FailoverSource it only waits.
func (p *Proxy) RunFailover(ctx context.Context) error {
	if p.fo == nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(p.fo.every)
	defer t.Stop()
	for {
		p.refreshFailover(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// refreshFailover asks for the instances of every datacenter a route may
// fail over to. A datacenter that does not answer keeps no pool: the
// failover skips it until it answers again.
func (p *Proxy) refreshFailover(ctx context.Context) {
	f := p.fo
	rt := p.syncRoutes()
	var others []string
	if dcs, err := f.src.Datacenters(ctx); err == nil && len(dcs) > 0 {
		others = dcs[1:]
	} else if err != nil {
		p.log.Debug("failover: listing datacenters", "err", err)
	}
	targets := map[string][]string{}
	insts := map[lb.RemoteKey][]registry.Instance{}
	for _, r := range rt.all {
		if r.Failover == nil {
			continue
		}
		order := r.Failover.order(others)
		targets[r.Service] = order
		for _, dc := range order {
			k := lb.RemoteKey{Datacenter: dc, Service: r.Service}
			if _, done := insts[k]; done {
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, max(f.every, 2*time.Second))
			in, err := f.src.Instances(cctx, dc, r.Service, "")
			cancel()
			if err != nil {
				p.log.Debug("failover: instances of another datacenter", "dc", dc, "service", r.Service, "err", err)
				in = nil
			}
			insts[k] = in
		}
	}
	f.remote.Set(insts)
	f.targets.Store(&targets)
}
