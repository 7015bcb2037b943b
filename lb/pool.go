package lb

import (
	"math/rand/v2"
	"time"
)

// Member is a backend in a pool with the weight of its instance.
type Member struct {
	Backend *Backend
	Weight  int64 // >= 1: Weights.Passing, or Weights.Warning for a warning instance
	ID      string
	Node    string
}

// Pool is the set of healthy instances of one service at one catalog index.
// It is immutable: a change in the catalog makes a new Pool.
type Pool struct {
	service string
	members []Member
	total   int // instances in the catalog, healthy or not
}

// Service is the name of the pool's service.
func (p *Pool) Service() string { return p.service }

// Members returns the pool's healthy backends. The slice must not be changed.
func (p *Pool) Members() []Member {
	if p == nil {
		return nil
	}
	return p.members
}

// Len is the number of healthy backends.
func (p *Pool) Len() int {
	if p == nil {
		return 0
	}
	return len(p.members)
}

// Total is the number of the service's instances in the catalog, healthy or not.
func (p *Pool) Total() int {
	if p == nil {
		return 0
	}
	return p.total
}

// Pick chooses the backend with the fewest requests in flight per unit of
// weight, skipping those in tried and those passive health checking took
// out, counts the new request on it and returns it; the caller calls
// Release when the request ends. Ties are broken at random in proportion
// to weight, so that an idle pool spreads requests by weight and no
// instance is favoured by its place in the list. When every backend not
// yet tried is out, Pick tries them anyway (the least loaded first): a
// request that might succeed beats a certain 502. It returns nil when every
// backend was tried or the pool is empty. Pick neither allocates nor locks.
func (p *Pool) Pick(tried []*Backend) *Backend {
	if p == nil || len(p.members) == 0 {
		return nil
	}
	b := p.pick(tried, false)
	if b == nil {
		b = p.pick(tried, true)
	}
	if b != nil {
		b.inflight.Add(1)
		b.requests.Add(1)
	}
	return b
}

func (p *Pool) pick(tried []*Backend, includeDown bool) *Backend {
	var best *Backend
	var bestLoad, bestWeight, tieWeight, now int64
	for i := range p.members {
		m := &p.members[i]
		b := m.Backend
		if wasTried(tried, b) {
			continue
		}
		if !includeDown {
			// The clock is read only when a backend was ever ejected.
			if d := b.downUntil.Load(); d != 0 {
				if now == 0 {
					now = time.Now().UnixNano()
				}
				if d > now {
					continue
				}
			}
		}
		load := b.inflight.Load()
		if best == nil {
			best, bestLoad, bestWeight, tieWeight = b, load, m.Weight, m.Weight
			continue
		}
		// load/weight < bestLoad/bestWeight, without division.
		l, r := load*bestWeight, bestLoad*m.Weight
		switch {
		case l < r:
			best, bestLoad, bestWeight, tieWeight = b, load, m.Weight, m.Weight
		case l == r:
			// Weighted reservoir sampling: each tied backend ends up
			// chosen with probability weight/sum of tied weights.
			tieWeight += m.Weight
			if rand.Int64N(tieWeight) < m.Weight {
				best, bestLoad, bestWeight = b, load, m.Weight
			}
		}
	}
	return best
}

func wasTried(tried []*Backend, b *Backend) bool {
	for _, t := range tried {
		if t == b {
			return true
		}
	}
	return false
}
