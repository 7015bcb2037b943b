// Command kv is the load generator of deploy/bench/kv.sh: it writes and
// reads a key/value store, pier through its Consul-compatible HTTP API or
// etcd through its own Go client, and prints one JSON line per run.
//
//	kv -target etcd -endpoints 127.0.0.1:2379,... -mode put -clients 64 -duration 10s
//	kv -target pier -endpoints 127.0.0.1:8500,... -mode cas -keys 64
//	kv -target pier -endpoints ... -mode leader      (which endpoint is the leader)
//
// It is a module of its own so that etcd's client and its gRPC stack stay
// out of pier's go.mod.
//
// Modes:
//
//	put       every client writes a random key of -keys, one write at a time
//	cas       every client reads a random key of -keys linearizably and writes
//	          it back conditionally on the index it read (pier: ?cas=ModifyIndex;
//	          etcd: a transaction on ModRevision); a cycle that loses the race is
//	          a conflict, not an error
//	read      linearizable reads (pier ?consistent, etcd's default Get) of keys
//	          written once before the clock starts
//	failover  writes at a fixed -rate through the first endpoint while the
//	          script kills the leader; reports the longest time between two
//	          successful writes, which is the failover as a client sees it
//	fill      writes each of -keys once (what read and cas do first unless
//	          -fill=false; the script runs it apart so that the servers' CPU
//	          of the measured run is the run's alone)
//	leader    prints the index in -endpoints of the current leader
//
// Every run is bounded by -duration and by -max-ops, whichever comes first.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// store is what a mode needs of a key/value store. Every call is one
// round trip (two for nothing), so that a latency is a store's.
type store interface {
	// put writes key unconditionally.
	put(ctx context.Context, key string, val []byte) error
	// get reads key linearizably; rev is its modify index (0 when absent).
	get(ctx context.Context, key string) (rev int64, err error)
	// cas writes key only if its modify index is still rev (0: absent).
	cas(ctx context.Context, key string, val []byte, rev int64) (bool, error)
	close()
}

type options struct {
	target    string
	endpoints []string
	mode      string
	clients   int
	valueSize int
	keys      int
	duration  time.Duration
	maxOps    int64
	rate      int
	opTimeout time.Duration
	servers   []string // pier: each endpoint's server (Raft) address, for leader
	fill      bool
	warmup    int64  // operations before the clock starts, not measured
	dc        string // pier: every request goes to this datacenter (?dc=), through the endpoint's
}

// result is the JSON line of one run. Latencies are of a whole operation as
// the client sees it (a CAS cycle: the read and the conditional write).
type result struct {
	Target    string  `json:"target"`
	Mode      string  `json:"mode"`
	Clients   int     `json:"clients,omitempty"` // failover: none, a fixed rate instead
	Rate      int     `json:"rate,omitempty"`
	ValueSize int     `json:"value_size"`
	Keys      int     `json:"keys"`
	Seconds   float64 `json:"seconds"`
	Ops       int64   `json:"ops"` // completed without error (CAS: won and lost cycles)
	Errors    int64   `json:"errors"`
	OpsPerSec float64 `json:"ops_per_s"`
	P50       float64 `json:"p50_ms"`
	P90       float64 `json:"p90_ms"`
	P99       float64 `json:"p99_ms"`
	P999      float64 `json:"p999_ms"`
	Max       float64 `json:"max_ms"`
	Mean      float64 `json:"mean_ms"`
	CASOK     int64   `json:"cas_ok,omitempty"`
	CASLost   int64   `json:"cas_conflict,omitempty"`
	CASOKPerS float64 `json:"cas_ok_per_s,omitempty"`
	MaxGap    float64 `json:"max_gap_ms,omitempty"`  // failover: longest time without a successful write
	GapAt     float64 `json:"gap_at_s,omitempty"`    // failover: when that gap began, from the start
	FirstErr  string  `json:"first_error,omitempty"` // one error, to tell a refusal from a timeout
}

func main() {
	var o options
	var endpoints, servers string
	flag.StringVar(&o.target, "target", "pier", "pier or etcd")
	flag.StringVar(&endpoints, "endpoints", "", "comma-separated host:port list (pier: HTTP API; etcd: client URLs without scheme); clients are spread over them")
	flag.StringVar(&o.mode, "mode", "put", "put, cas, read, failover or leader")
	flag.IntVar(&o.clients, "clients", 64, "concurrent clients, each with one operation in flight")
	flag.IntVar(&o.valueSize, "value-size", 100, "bytes per value")
	flag.IntVar(&o.keys, "keys", 1000, "distinct keys (cas: fewer keys, more conflicts)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of the run")
	flag.Int64Var(&o.maxOps, "max-ops", 1_000_000, "stop after this many operations even before -duration")
	flag.IntVar(&o.rate, "rate", 100, "failover: writes per second")
	flag.DurationVar(&o.opTimeout, "op-timeout", 5*time.Second, "longest wait for one operation")
	flag.Int64Var(&o.warmup, "warmup", 0, "put, cas, read: operations done (over the same connections) before the clock starts, not measured")
	flag.StringVar(&o.dc, "dc", "", "pier: send every request to this datacenter with ?dc= (deploy/bench/multidc.sh)")
	flag.BoolVar(&o.fill, "fill", true, "read, cas: write every key once before the clock starts")
	flag.StringVar(&servers, "server-addrs", "", "pier leader: each endpoint's server address, in -endpoints order (what /v1/status/leader names once Raft is in)")
	flag.Parse()
	o.endpoints = split(endpoints)
	o.servers = split(servers)
	if len(o.endpoints) == 0 {
		fail("-endpoints: at least one host:port is needed")
	}
	if o.clients < 1 || o.valueSize < 1 || o.keys < 1 || o.maxOps < 1 || o.rate < 1 || o.duration <= 0 {
		fail("-clients, -value-size, -keys, -max-ops, -rate and -duration must be positive")
	}
	if o.warmup < 0 {
		fail("-warmup must not be negative")
	}
	if o.target != "pier" && o.target != "etcd" {
		fail("-target: pier or etcd, not " + o.target)
	}

	ctx := context.Background()
	if o.mode == "leader" {
		i, addr, agree, err := leader(ctx, o)
		if err != nil {
			fail("leader: " + err.Error())
		}
		json.NewEncoder(os.Stdout).Encode(map[string]any{"leader": i, "addr": addr, "agree": agree})
		return
	}
	stores := make([]store, len(o.endpoints))
	for i, ep := range o.endpoints {
		s, err := open(o.target, ep, o.clients, o.dc)
		if err != nil {
			fail(fmt.Sprintf("-endpoints %s: %v", ep, err))
		}
		defer s.close()
		stores[i] = s
	}
	var res result
	var err error
	switch o.mode {
	case "put", "cas", "read":
		res, err = load(ctx, o, stores)
	case "failover":
		res, err = failover(ctx, o, stores[0])
	case "fill":
		begin := time.Now()
		err = fill(ctx, o, stores)
		res = result{Ops: int64(o.keys), Seconds: time.Since(begin).Seconds()}
	default:
		fail("-mode: put, cas, read, failover, fill or leader, not " + o.mode)
	}
	if err != nil {
		fail(o.mode + ": " + err.Error())
	}
	res.Target, res.Mode, res.Clients, res.ValueSize, res.Keys = o.target, o.mode, o.clients, o.valueSize, o.keys
	if o.mode == "failover" {
		res.Clients, res.Rate = 0, o.rate
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

func open(target, endpoint string, clients int, dc string) (store, error) {
	if target == "etcd" {
		return newEtcd(endpoint)
	}
	p := newPier(endpoint, clients)
	p.dc = dc
	return p, nil
}

func key(i int) string { return fmt.Sprintf("bench/k%06d", i) }

func value(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(rand.IntN(26))
	}
	return b
}

// load runs put, cas or read: o.clients goroutines, each bound to one
// endpoint in turn, each with one operation in flight, until the duration
// or the operation budget runs out.
func load(ctx context.Context, o options, stores []store) (result, error) {
	if o.fill && (o.mode == "read" || o.mode == "cas") {
		if err := fill(ctx, o, stores); err != nil {
			return result{}, err
		}
	}
	if err := warmup(ctx, o, stores); err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	var (
		started, errs, casOK, casLost atomic.Int64
		firstErr                      sync.Once
		firstMsg                      string
		wg                            sync.WaitGroup
	)
	hists := make([]*hist, o.clients)
	begin := time.Now()
	for c := range o.clients {
		h := &hist{}
		hists[c] = h
		s := stores[c%len(stores)]
		val := value(o.valueSize)
		wg.Go(func() {
			for ctx.Err() == nil && started.Add(1) <= o.maxOps {
				k := key(rand.IntN(o.keys))
				octx, ocancel := context.WithTimeout(ctx, o.opTimeout)
				t0 := time.Now()
				var err error
				switch o.mode {
				case "put":
					err = s.put(octx, k, val)
				case "read":
					_, err = s.get(octx, k)
				case "cas":
					var rev int64
					if rev, err = s.get(octx, k); err == nil {
						var ok bool
						if ok, err = s.cas(octx, k, val, rev); ok {
							casOK.Add(1)
						} else if err == nil {
							casLost.Add(1)
						}
					}
				}
				d := time.Since(t0)
				ocancel()
				if err != nil {
					if ctx.Err() != nil {
						return // cut off by the end of the run: neither an op nor an error
					}
					errs.Add(1)
					firstErr.Do(func() { firstMsg = err.Error() })
					continue
				}
				h.record(d)
			}
		})
	}
	wg.Wait()
	secs := time.Since(begin).Seconds()
	h := &hist{}
	for _, x := range hists {
		h.merge(x)
	}
	r := result{
		Seconds: secs, Ops: int64(h.n), Errors: errs.Load(), OpsPerSec: float64(h.n) / secs,
		P50: ms(h.quantile(0.50)), P90: ms(h.quantile(0.90)), P99: ms(h.quantile(0.99)), P999: ms(h.quantile(0.999)), Max: ms(h.max), Mean: ms(h.mean()),
		FirstErr: firstMsg,
	}
	if o.mode == "cas" {
		r.CASOK, r.CASLost, r.CASOKPerS = casOK.Load(), casLost.Load(), float64(casOK.Load())/secs
	}
	return r, nil
}

// warmup does o.warmup operations of the run's kind, unmeasured, spread
// over the clients' stores as the run spreads them (each store keeps its
// connections, so the run starts on warm ones); writes for every mode, which
// warm a server's write path as well as its read path. Bounded by
// o.duration.
func warmup(ctx context.Context, o options, stores []store) error {
	if o.warmup == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, o.duration+o.opTimeout)
	defer cancel()
	var next atomic.Int64
	errc := make(chan error, o.clients)
	var wg sync.WaitGroup
	for c := range o.clients {
		s := stores[c%len(stores)]
		val := value(o.valueSize)
		wg.Go(func() {
			for next.Add(1) <= o.warmup {
				octx, ocancel := context.WithTimeout(ctx, o.opTimeout)
				err := s.put(octx, key(rand.IntN(o.keys)), val)
				ocancel()
				if err != nil {
					errc <- fmt.Errorf("warming up: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// fill writes every key once, so that reads find values and CAS cycles
// start from an existing index rather than from "absent".
func fill(ctx context.Context, o options, stores []store) error {
	ctx, cancel := context.WithTimeout(ctx, o.duration+o.opTimeout)
	defer cancel()
	var next atomic.Int64
	errc := make(chan error, o.clients)
	var wg sync.WaitGroup
	for c := range min(o.clients, o.keys) {
		s := stores[c%len(stores)]
		val := value(o.valueSize)
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < o.keys; i = int(next.Add(1) - 1) {
				octx, ocancel := context.WithTimeout(ctx, o.opTimeout)
				err := s.put(octx, key(i), val)
				ocancel()
				if err != nil {
					errc <- fmt.Errorf("writing %s before the run: %w", key(i), err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}

// failover writes at o.rate per second through one store for o.duration,
// each write in its own goroutine (a write stuck in an election does not
// stop the next ones from starting; at most o.rate × o.opTimeout are in
// flight, so no tick is skipped), and reports the longest time between two
// successful writes, or from the last one to the end of the run: with the
// leader killed in the middle of the run, the time a client could not
// write.
func failover(ctx context.Context, o options, s store) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	var (
		mu       sync.Mutex
		done     []time.Time // completion of each successful write
		errs     atomic.Int64
		firstMsg string
		wg       sync.WaitGroup
	)
	h := &hist{}
	inflight := make(chan struct{}, max(1, int(float64(o.rate)*o.opTimeout.Seconds())+1))
	val := value(o.valueSize)
	tick := time.NewTicker(time.Second / time.Duration(o.rate))
	defer tick.Stop()
	begin := time.Now()
	var n int64
loop:
	for n < o.maxOps {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
		select {
		case inflight <- struct{}{}:
		default:
			continue // every slot taken by a stuck write: skip this tick
		}
		n++
		k := key(int(n % int64(o.keys)))
		wg.Go(func() {
			defer func() { <-inflight }()
			octx, ocancel := context.WithTimeout(context.Background(), o.opTimeout)
			defer ocancel()
			t0 := time.Now()
			err := s.put(octx, k, val)
			t1 := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs.Add(1)
				if firstMsg == "" {
					firstMsg = err.Error()
				}
				return
			}
			done = append(done, t1)
			h.record(t1.Sub(t0))
		})
	}
	wg.Wait() // each write ends within o.opTimeout
	end := time.Now()
	slices.SortFunc(done, func(a, b time.Time) int { return a.Compare(b) })
	if len(done) == 0 {
		return result{}, fmt.Errorf("no write succeeded in %v (%s)", o.duration, firstMsg)
	}
	prev := done[0] // the first write's own latency (connecting) is no failover
	var gap time.Duration
	gapAt := prev
	for _, t := range append(done[1:], end) {
		if d := t.Sub(prev); d > gap {
			gap, gapAt = d, prev
		}
		prev = t
	}
	secs := end.Sub(begin).Seconds()
	return result{
		Seconds: secs, Ops: int64(len(done)), Errors: errs.Load(), OpsPerSec: float64(len(done)) / secs,
		P50: ms(h.quantile(0.50)), P90: ms(h.quantile(0.90)), P99: ms(h.quantile(0.99)), P999: ms(h.quantile(0.999)), Max: ms(h.max),
		MaxGap: ms(gap), GapAt: gapAt.Sub(begin).Seconds(), FirstErr: firstMsg,
	}, nil
}

// leader finds which endpoint is the leader. agree tells whether every
// endpoint named the same one (pier's gossip KV has no leader: each agent
// names itself, and the first endpoint's answer is taken).
func leader(ctx context.Context, o options) (int, string, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, o.opTimeout)
	defer cancel()
	if o.target == "etcd" {
		return etcdLeader(ctx, o.endpoints)
	}
	return pierLeader(ctx, o.endpoints, o.servers)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "kv:", msg)
	os.Exit(2)
}
