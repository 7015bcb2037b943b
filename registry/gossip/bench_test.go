package gossip

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
)

// counting wraps memberlist's network transport to count the bytes this node
// sends, by packet (UDP gossip, probes) and by stream (TCP push/pull).
type counting struct {
	*memberlist.NetTransport
	sent *atomic.Int64
}

func (c counting) WriteTo(b []byte, addr string) (time.Time, error) {
	c.sent.Add(int64(len(b)))
	return c.NetTransport.WriteTo(b, addr)
}

func (c counting) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	c.sent.Add(int64(len(b)))
	return c.NetTransport.WriteToAddress(b, a)
}

func (c counting) DialAddressTimeout(a memberlist.Address, d time.Duration) (net.Conn, error) {
	conn, err := c.NetTransport.DialAddressTimeout(a, d)
	if err != nil {
		return nil, err
	}
	return countingConn{conn, c.sent}, nil
}

type countingConn struct {
	net.Conn
	sent *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.sent.Add(int64(len(b)))
	return c.Conn.Write(b)
}

// benchCluster starts n nodes with memberlist's default LAN timings on
// loopback, counting every byte sent.
func benchCluster(b *testing.B, n int, sent *atomic.Int64) []*node {
	b.Helper()
	var nodes []*node
	for i := range n {
		rc := registry.DefaultConfig()
		rc.NodeName, rc.Address = fmt.Sprintf("b%d", i), "127.0.0.1"
		reg, err := registry.New(rc)
		if err != nil {
			b.Fatal(err)
		}
		gc := DefaultConfig()
		gc.Registry = reg
		gc.BindAddr, gc.BindPort = "127.0.0.1", 0
		if i > 0 {
			gc.StartJoin = []string{nodes[rand.N(len(nodes))].g.Addr()}
		}
		gc.Memberlist = func(c *memberlist.Config) {
			nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{c.BindAddr}, BindPort: c.BindPort, Logger: c.Logger})
			if err != nil {
				b.Fatal(err)
			}
			c.Transport = counting{nt, sent}
		}
		g, err := New(gc)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		nd := &node{reg: reg, g: g, cancel: cancel, done: make(chan error, 1)}
		go func() { nd.done <- g.Run(ctx) }()
		b.Cleanup(nd.stop)
		nodes = append(nodes, nd)
	}
	for _, nd := range nodes {
		if !waitUntil(nd.reg, 2*time.Minute, func(s *registry.Snapshot) bool { return len(s.ServiceInstances("consul")) == n }) {
			for _, st := range nd.reg.FullState() {
				if len(st.Entries) < 2 {
					b.Logf("%s's state of %s: complete %d, entries %+v", nd.reg.NodeName(), st.Node, st.Complete, st.Entries)
					for _, o := range nodes {
						if o.reg.NodeName() == st.Node {
							own := o.reg.FullState()[0]
							b.Logf("its own state: complete %d, %d entries; members %v", own.Complete, len(own.Entries), o.g.NumMembers())
							for _, e := range own.Entries {
								b.Logf("  %s %d %s v%d", e.Node, e.Kind, e.Key, e.Version)
							}
						}
					}
				}
			}
			b.Fatalf("%s did not see %d nodes: %s; members %d", nd.reg.NodeName(), n, describe(nd.reg.Snapshot()), nd.g.NumMembers())
		}
	}
	return nodes
}

func percentile(ds []time.Duration, p float64) time.Duration {
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(float64(len(ds))*p))]
}

// BenchmarkPropagation measures the time from a registration on one node
// until every node of the cluster has it, and the gossip traffic.
// Run: go test -run XXX -bench Propagation -benchtime 20x ./registry/gossip/
func BenchmarkPropagation(b *testing.B) {
	for _, n := range []int{10, 50, 100} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			var sent atomic.Int64
			nodes := benchCluster(b, n, &sent)
			var lat []time.Duration
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("svc%d", i)
				src := nodes[rand.N(n)]
				var wg sync.WaitGroup
				var slowest atomic.Int64
				start := time.Now()
				for _, nd := range nodes {
					wg.Add(1)
					go func() {
						defer wg.Done()
						waitUntil(nd.reg, 30*time.Second, func(s *registry.Snapshot) bool {
							for _, in := range s.ServiceInstances("bench") {
								if in.Service.ID == id {
									return true
								}
							}
							return false
						})
						d := int64(time.Since(start))
						for {
							cur := slowest.Load()
							if d <= cur || slowest.CompareAndSwap(cur, d) {
								break
							}
						}
					}()
				}
				src.reg.RegisterService(registry.Service{ID: id, Name: "bench", Port: 80, Weights: registry.Weights{Passing: 1, Warning: 1}}, nil, registry.SourceAPI)
				wg.Wait()
				lat = append(lat, time.Duration(slowest.Load()))
			}
			b.StopTimer()
			b.ReportMetric(float64(percentile(lat, 0.5).Milliseconds()), "ms-p50-all-nodes")
			b.ReportMetric(float64(percentile(lat, 0.99).Milliseconds()), "ms-p99-all-nodes")

			// Idle traffic: bytes each node sends per second with nothing
			// changing (probes, gossip, push/pull).
			before := sent.Load()
			idle := 10 * time.Second
			time.Sleep(idle) // measuring a rate over wall time, not waiting for an event
			b.ReportMetric(float64(sent.Load()-before)/idle.Seconds()/float64(n), "idle-bytes/node/s")

			// Crash detection: how long until every other node marks a
			// node that vanished without a word critical.
			victim := nodes[n-1]
			start := time.Now()
			victim.crash()
			var wg sync.WaitGroup
			var slowest atomic.Int64
			for _, nd := range nodes[:n-1] {
				wg.Add(1)
				go func() {
					defer wg.Done()
					waitUntil(nd.reg, 2*time.Minute, func(s *registry.Snapshot) bool {
						return registry.Aggregate(s.NodeChecks(victim.reg.NodeName(), "")) == registry.StatusCritical
					})
					d := int64(time.Since(start))
					for {
						cur := slowest.Load()
						if d <= cur || slowest.CompareAndSwap(cur, d) {
							break
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(time.Duration(slowest.Load()).Seconds(), "s-crash-seen-by-all")
		})
	}
}

// BenchmarkKVPropagation25 measures the time from a KV write on one node
// until every node of a 25-node cluster has it.
// Run: go test -run XXX -bench KVPropagation -benchtime 20x ./registry/gossip/
func BenchmarkKVPropagation25(b *testing.B) {
	var sent atomic.Int64
	nodes := benchCluster(b, 25, &sent)
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		key := fmt.Sprintf("bench/%d", i)
		var wg sync.WaitGroup
		var slowest atomic.Int64
		start := time.Now()
		for _, nd := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				waitUntil(nd.reg, 30*time.Second, func(s *registry.Snapshot) bool {
					_, ok := s.KV(key)
					return ok
				})
				d := int64(time.Since(start))
				for {
					cur := slowest.Load()
					if d <= cur || slowest.CompareAndSwap(cur, d) {
						break
					}
				}
			}()
		}
		nodes[rand.N(len(nodes))].reg.KVPut(key, []byte("v"), 0, nil)
		wg.Wait()
		lat = append(lat, time.Duration(slowest.Load()))
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.5).Milliseconds()), "ms-p50-all-nodes")
	b.ReportMetric(float64(percentile(lat, 0.99).Milliseconds()), "ms-p99-all-nodes")
}
