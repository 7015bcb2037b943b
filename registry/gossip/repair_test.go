package gossip

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pier-dev/pier/registry"
)

// hashEntry must hash the bytes earlier versions fed hash/fnv, or a cluster
// of old and new agents would find every digest different and exchange
// whole states every second.
func TestHashEntryMatchesFNV(t *testing.T) {
	for _, e := range []registry.Entry{
		{Node: "n1", Kind: registry.KindService, Key: "redis1", Version: 1 << 40},
		{Node: "", Kind: registry.KindNode, Version: 0},
		{Node: "node-ä", Kind: registry.KindKV, Key: "a/b", Version: ^uint64(0), Deleted: true},
	} {
		h := fnv.New64a()
		h.Write([]byte(e.Node))
		h.Write([]byte{0, byte(e.Kind)})
		h.Write([]byte(e.Key))
		var b [9]byte
		binary.BigEndian.PutUint64(b[:8], e.Version)
		if e.Deleted {
			b[8] = 1
		}
		h.Write(b[:])
		if got, want := hashEntry(&e), h.Sum64(); got != want {
			t.Errorf("hashEntry(%+v) = %x, hash/fnv %x", e, got, want)
		}
		f := fnv.New64a()
		f.Write([]byte(e.Key))
		if got, want := fnv64a(e.Key), f.Sum64(); got != want {
			t.Errorf("fnv64a(%q) = %x, hash/fnv %x", e.Key, got, want)
		}
	}
}

// quietGossip leaves nodes only the digest exchange: no gossip rounds, no
// probes (whose packets carry broadcasts too) and no push/pull within the
// test, so whatever a node did not hear at its join it can learn only there.
func quietGossip(c *Config) {
	c.DigestInterval = 200 * time.Millisecond
	prev := c.Memberlist
	c.Memberlist = func(mc *memberlist.Config) {
		prev(mc)
		mc.GossipInterval = time.Hour
		mc.ProbeInterval = time.Hour
		mc.PushPullInterval = time.Hour
	}
}

// TestMissedMemberRepaired: b joined before c, and the alive message that
// would tell b about c never reaches it (a member missed at a join, as 1 of
// 50 nodes did in deploy/bench/gossip.sh). b lists c within seconds all the
// same, through the digest exchange, not at the next push/pull.
func TestMissedMemberRepaired(t *testing.T) {
	mem := &memNet{}
	a := startNode(t, "a", opts{mem: mem, tweak: quietGossip})
	b := startNode(t, "b", opts{mem: mem, tweak: quietGossip, join: []string{a.g.Addr()}})
	waitFor(t, b.reg, 10*time.Second, "a in b's catalog", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 2 })
	c := startNode(t, "c", opts{mem: mem, tweak: quietGossip, join: []string{a.g.Addr()}})
	waitFor(t, c.reg, 10*time.Second, "a and b in c's catalog", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 3 })
	waitFor(t, b.reg, 8*time.Second, "c, missed at its join, in b's catalog", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 3 })
	if n := b.g.ml.NumMembers(); n != 3 {
		t.Errorf("b's memberlist has %d members, want 3", n)
	}
}

// TestLostBroadcastRepaired: in a cluster of 8 gossiping as usual, every
// datagram to one node that carries a registration is lost (with whatever
// else shared the packet); push/pull is an hour away. The node has the
// registration within seconds, from the digest exchange (TCP), and so do
// the other seven from gossip.
func TestLostBroadcastRepaired(t *testing.T) {
	mem := &memNet{}
	noPushPull := func(c *Config) {
		prev := c.Memberlist
		c.Memberlist = func(mc *memberlist.Config) {
			prev(mc)
			mc.PushPullInterval = time.Hour
		}
	}
	nodes := []*node{startNode(t, "n0", opts{mem: mem, tweak: noPushPull})}
	for i := 1; i < 8; i++ {
		nodes = append(nodes, startNode(t, fmt.Sprintf("n%d", i), opts{mem: mem, tweak: noPushPull, join: []string{nodes[0].g.Addr()}}))
	}
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "8 nodes", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 8 })
	}
	deaf := nodes[5]
	var lost atomic.Int32
	drop := func(b []byte) bool {
		if bytes.Contains(b, []byte("lostsvc")) {
			lost.Add(1)
			return true
		}
		return false
	}
	mem.peer(deaf.g.Addr()).drop.Store(&drop)
	start := time.Now()
	register(t, nodes[0], "lostsvc", 9000)
	for _, n := range nodes {
		waitFor(t, n.reg, 8*time.Second, "the registration", hasInstance("n0", "lostsvc", false))
	}
	if lost.Load() == 0 {
		t.Fatal("no datagram to the deaf node was dropped: the repair was not exercised")
	}
	t.Logf("%d datagrams lost; every node had the registration after %v", lost.Load(), time.Since(start).Round(time.Millisecond))
}

// TestMissedChangeInFirstAnswer: a node that missed a recent change and
// sends its digest to a node that has it holds the change after that
// node's first answer (the owner hashes with the states of the owners that
// changed last), not after the two more messages of the owner exchange.
// Counted in streams, not time: nothing else moves in the cluster (no
// gossip rounds, probes, push/pull or digests of their own).
func TestMissedChangeInFirstAnswer(t *testing.T) {
	mem := &memNet{}
	still := func(c *Config) {
		quietGossip(c)
		c.DigestInterval = time.Hour
	}
	a := startNode(t, "a", opts{mem: mem, tweak: still})
	b := startNode(t, "b", opts{mem: mem, tweak: still, join: []string{a.g.Addr()}})
	for _, n := range []*node{a, b} {
		waitFor(t, n.reg, 10*time.Second, "a and b", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 2 })
	}
	before := rootOf(a.g.digests())
	register(t, a, "missed1", 9000) // no gossip round carries it to b
	// The digest counts the change once its grace has passed.
	deadline := time.Now().Add(10 * time.Second)
	for rootOf(a.g.digests()) == before {
		if time.Now().After(deadline) {
			t.Fatal("a's digest never counted the registration")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if hasInstance("a", "missed1", false)(b.reg.Snapshot()) {
		t.Fatal("b has the registration before any repair: the test exercises nothing")
	}
	in := mem.peer(b.g.Addr())
	streams := in.streamsIn.Load()
	b.g.sendDigest()
	waitFor(t, b.reg, 10*time.Second, "the registration at b", hasInstance("a", "missed1", false))
	if got := in.streamsIn.Load() - streams; got != 1 {
		t.Errorf("b had the registration after %d streams from a, want 1 (a's answer to its digest)", got)
	}
}

// TestRepairWaitsWhileMembersJoin: five nodes join a first one at once.
// The first, which hears of all five within a moment, holds its digests
// back (sends none and answers none) while they join, and sends them again
// once its member list has been still for settleGrace.
func TestRepairWaitsWhileMembersJoin(t *testing.T) {
	mem := &memNet{}
	fast := func(c *Config) {
		c.DigestInterval = 100 * time.Millisecond
		c.Registerer = prometheus.NewRegistry()
	}
	first := startNode(t, "n0", opts{mem: mem, tweak: fast})
	for i := 1; i <= 5; i++ {
		startNode(t, fmt.Sprintf("n%d", i), opts{mem: mem, tweak: fast, join: []string{first.g.Addr()}})
	}
	waitFor(t, first.reg, 10*time.Second, "6 nodes", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 6 })
	// Its next digest rounds come while the joins are within settleGrace.
	for end := time.Now().Add(settleGrace); testutil.ToFloat64(first.g.met.paused) < 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("n0 held back no digest in the %v after five members joined", settleGrace)
		}
	}
	// Once the joins are settleGrace behind, digests go out again: the
	// count stops growing.
	deadline := time.Now().Add(settleGrace + 5*time.Second)
	for {
		before := testutil.ToFloat64(first.g.met.paused)
		time.Sleep(time.Second)
		if testutil.ToFloat64(first.g.met.paused) == before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n0 still holds its digests back %v after the joins", settleGrace+5*time.Second)
		}
	}
}
