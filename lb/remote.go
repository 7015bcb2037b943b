package lb

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Remote keeps pools of other datacenters' instances, for the front
// door's failover: the proxy hands it each datacenter's instances of a
// service as it learns them, and reads the pools on its request path as
// it reads the Table's. Its backends are its own, kept by address across
// updates, with the same clients and passive health as the local ones.
type Remote struct {
	b        *Balancer
	mu       sync.Mutex
	backends map[string]*Backend
	pools    atomic.Pointer[map[RemoteKey]*Pool]
}

// RemoteKey names one datacenter's pool of one service.
type RemoteKey struct{ Datacenter, Service string }

// NewRemote starts an empty set of remote pools on b's settings.
func (b *Balancer) NewRemote() *Remote {
	r := &Remote{b: b, backends: map[string]*Backend{}}
	r.pools.Store(&map[RemoteKey]*Pool{})
	return r
}

// Pool answers the pool of k, nil when there is none; it neither
// allocates nor locks.
func (r *Remote) Pool(k RemoteKey) *Pool { return (*r.pools.Load())[k] }

// Set replaces the pools with the instances given per key (the healthy
// ones enter a pool, as in the Table); a key left out has no pool any
// more, and a backend no pool keeps is let go.
func (r *Remote) Set(insts map[RemoteKey][]registry.Instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pools := make(map[RemoteKey]*Pool, len(insts))
	seen := map[string]bool{}
	for k, ins := range insts {
		p := &Pool{service: k.Service, total: len(ins)}
		for _, in := range ins {
			w, ok := r.b.weight(in)
			if !ok || in.Service.Port == 0 {
				continue
			}
			addr := instanceAddr(in)
			be := r.backends[addr]
			if be == nil {
				be = newBackend(addr, &r.b.cfg)
				r.backends[addr] = be
			}
			seen[addr] = true
			p.add(Member{Backend: be, Weight: w, ID: in.Service.ID, Node: in.Node.Name})
		}
		pools[k] = p
	}
	for addr, be := range r.backends {
		if !seen[addr] {
			be.closeIdle()
			delete(r.backends, addr)
		}
	}
	r.pools.Store(&pools)
}

// Usable reports whether p has a backend that passive health checking
// has not taken out: a pool whose every backend failed just now is as good
// as empty to a route that can fail over. It neither allocates nor locks.
func (p *Pool) Usable() bool {
	if p == nil {
		return false
	}
	now := time.Now().UnixNano()
	for i := range p.members {
		if !p.members[i].Backend.Down(now) {
			return true
		}
	}
	return false
}

// instanceAddr is where an instance's default port is reached: the
// service's address, else its node's.
func instanceAddr(in registry.Instance) string {
	host := in.Service.Address
	if host == "" {
		host = in.Node.Address
	}
	return net.JoinHostPort(host, strconv.Itoa(in.Service.Port))
}
