package gossip

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
)

// node is one agent of an in-process cluster on loopback.
type node struct {
	reg    *registry.Registry
	g      *Gossip
	cancel context.CancelFunc
	done   chan error
}

// fast shortens memberlist's LAN timings so that tests of failure detection
// take seconds, not half a minute.
// They stay loose enough that a loaded 2-core machine under -race does not
// take a slow node for a dead one.
func fast(c *memberlist.Config) {
	c.ProbeInterval = 500 * time.Millisecond
	c.ProbeTimeout = 300 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 50 * time.Millisecond
	c.PushPullInterval = 2 * time.Second
	c.TCPTimeout = 2 * time.Second
}

type opts struct {
	port    int
	dataDir string
	key     []byte
	join    []string
	tweak   func(*Config)
	reg     func(*registry.Config)
	// mem, when set, carries the node's gossip in memory: clusters of many
	// nodes then depend neither on free ports nor on the machine's load.
	mem *memNet
}

func startNode(t *testing.T, name string, o opts) *node {
	t.Helper()
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address, rc.DataDir = name, "127.0.0.1", o.dataDir
	if o.reg != nil {
		o.reg(&rc)
	}
	reg, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	gc := DefaultConfig()
	gc.Registry = reg
	gc.BindAddr, gc.BindPort = "127.0.0.1", o.port
	gc.EncryptKey = o.key
	gc.StartJoin = o.join
	gc.Memberlist = fast
	gc.LeaveTimeout = 2 * time.Second
	if os.Getenv("PIER_TEST_GOSSIP_LOG") != "" {
		gc.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	if o.mem != nil {
		tr := o.mem.transport()
		gc.Memberlist = func(c *memberlist.Config) { fast(c); c.Transport = tr }
	}
	if o.tweak != nil {
		o.tweak(&gc)
	}
	g, err := New(gc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{reg: reg, g: g, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- g.Run(ctx) }()
	t.Cleanup(n.stop)
	return n
}

// stop leaves gracefully and waits for Run to return.
func (n *node) stop() {
	n.cancel()
	<-n.done
	n.done <- nil // later stops return at once
}

// crash stops the node without a word to the others, as kill -9 would.
func (n *node) crash() {
	n.g.ml.Shutdown()
	n.g.mu.Lock()
	n.g.leaving = true // Run's exit must not try to leave
	n.g.mu.Unlock()
	n.stop()
}

// cluster starts n nodes, each joining the first.
func cluster(t *testing.T, n int) []*node { return clusterOn(t, n, nil) }

// clusterOn is cluster with every node on mem when it is not nil.
func clusterOn(t *testing.T, n int, mem *memNet) []*node {
	t.Helper()
	nodes := []*node{startNode(t, "n0", opts{mem: mem})}
	for i := 1; i < n; i++ {
		nodes = append(nodes, startNode(t, fmt.Sprintf("n%d", i), opts{mem: mem, join: []string{nodes[0].g.Addr()}}))
	}
	for _, nd := range nodes {
		waitFor(t, nd.reg, 60*time.Second, fmt.Sprintf("%d alive nodes in the catalog", n), func(s *registry.Snapshot) bool {
			return len(s.ServiceInstances("consul")) == n && len(s.Nodes()) == n
		})
	}
	return nodes
}

// waitFor waits until cond holds on reg's snapshot, re-checking at every
// change: no sleeps.
func waitFor(t *testing.T, reg *registry.Registry, d time.Duration, what string, cond func(*registry.Snapshot) bool) {
	t.Helper()
	if !waitUntil(reg, d, cond) {
		t.Fatalf("%s: not within %v on %s; it sees %s", what, d, reg.NodeName(), describe(reg.Snapshot()))
	}
}

// describe summarizes a snapshot for a failure message.
func describe(s *registry.Snapshot) string {
	var b strings.Builder
	for _, n := range s.Nodes() {
		fmt.Fprintf(&b, "[%s %s:", n.Name, registry.Aggregate(s.NodeChecks(n.Name, "")))
		for _, e := range s.NodeServices(n.Name) {
			fmt.Fprintf(&b, " %s", e.ID)
		}
		b.WriteString("]")
	}
	return b.String()
}

func waitUntil(reg *registry.Registry, d time.Duration, cond func(*registry.Snapshot) bool) bool {
	timeout := time.After(d)
	for {
		s := reg.Snapshot()
		if cond(s) {
			return true
		}
		select {
		case <-s.Changed():
		case <-timeout:
			return false
		}
	}
}

func instances(s *registry.Snapshot, name string) []registry.Instance {
	return s.ServiceInstances(name)
}

func hasInstance(node, id string, passing bool) func(*registry.Snapshot) bool {
	return func(s *registry.Snapshot) bool {
		for _, in := range s.ServiceInstances("redis") {
			if in.Node.Name == node && in.Service.ID == id {
				return !passing || in.Status() == registry.StatusPassing
			}
		}
		return false
	}
}

func register(t *testing.T, n *node, id string, port int) {
	t.Helper()
	err := n.reg.RegisterService(registry.Service{ID: id, Name: "redis", Port: port, Tags: []string{"v1"}, Weights: registry.Weights{Passing: 1, Warning: 1}}, nil, registry.SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
}

func TestReplicationAndDeregistration(t *testing.T) {
	nodes := cluster(t, 3)
	register(t, nodes[1], "redis1", 8000)
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "redis1 replicated", hasInstance("n1", "redis1", true))
		in := instances(n.reg.Snapshot(), "redis")[0]
		if in.Node.Address != "127.0.0.1" || in.Service.Port != 8000 || in.Service.Tags[0] != "v1" {
			t.Errorf("%s sees %+v on %+v", n.reg.NodeName(), in.Service, in.Node)
		}
	}
	// Every node lists every agent's own "consul" service.
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "consul service on every node", func(s *registry.Snapshot) bool {
			return len(s.ServiceInstances("consul")) == 3
		})
	}
	if err := nodes[1].reg.DeregisterService("redis1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "redis1 gone", func(s *registry.Snapshot) bool {
			return len(s.ServiceInstances("redis")) == 0
		})
	}
}

func TestSameServiceIDOnTwoNodes(t *testing.T) {
	nodes := cluster(t, 3)
	register(t, nodes[0], "redis1", 8000)
	register(t, nodes[2], "redis1", 9000)
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "both instances", func(s *registry.Snapshot) bool {
			return len(s.ServiceInstances("redis")) == 2
		})
	}
	ins := instances(nodes[1].reg.Snapshot(), "redis")
	if ins[0].Node.Name != "n0" || ins[0].Service.Port != 8000 || ins[1].Node.Name != "n2" || ins[1].Service.Port != 9000 {
		t.Errorf("instances: %+v %+v", ins[0].Service, ins[1].Service)
	}
}

func TestLeaveTakesServicesAtOnce(t *testing.T) {
	nodes := cluster(t, 3)
	register(t, nodes[2], "redis1", 8000)
	waitFor(t, nodes[0].reg, 10*time.Second, "redis1", hasInstance("n2", "redis1", true))
	nodes[2].stop() // graceful: leaves
	for _, n := range nodes[:2] {
		waitFor(t, n.reg, 10*time.Second, "n2 gone", func(s *registry.Snapshot) bool {
			_, ok := s.Node("n2")
			return !ok && len(s.ServiceInstances("redis")) == 0
		})
	}
	var st registry.MemberStatus
	for _, m := range nodes[0].g.Members() {
		if m.Name == "n2" {
			st = m.Status
		}
	}
	if st != registry.MemberLeft {
		t.Errorf("n2 is %v in members, want left", st)
	}
}

func TestCrashMarksCriticalThenRejoinWithNewerState(t *testing.T) {
	dir := t.TempDir()
	n0 := startNode(t, "n0", opts{})
	n1 := startNode(t, "n1", opts{join: []string{n0.g.Addr()}})
	n2 := startNode(t, "n2", opts{dataDir: dir, join: []string{n0.g.Addr()}})
	register(t, n2, "redis1", 8000)
	register(t, n2, "redis2", 8001)
	for _, n := range []*node{n0, n1} {
		waitFor(t, n.reg, 10*time.Second, "redis2 replicated", hasInstance("n2", "redis2", true))
	}
	port := int(n2.g.ml.LocalNode().Port)
	n2.crash()
	for _, n := range []*node{n0, n1} {
		waitFor(t, n.reg, 20*time.Second, "n2 critical", func(s *registry.Snapshot) bool {
			ins := s.ServiceInstances("redis")
			return len(ins) == 2 && ins[0].Status() == registry.StatusCritical
		})
		var failed bool
		for _, m := range n.g.Members() {
			failed = failed || m.Name == "n2" && m.Status == registry.MemberFailed
		}
		if !failed {
			t.Errorf("%s: n2 is not failed in members: %+v", n.reg.NodeName(), n.g.Members())
		}
	}

	// While n2 is down its data dir changes: redis2 deregistered, redis3 new.
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address, rc.DataDir = "n2", "127.0.0.1", dir
	offline, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	offline.DeregisterService("redis2")
	offline.RegisterService(registry.Service{ID: "redis3", Name: "redis", Port: 8003, Weights: registry.Weights{Passing: 1, Warning: 1}}, nil, registry.SourceAPI)

	back := startNode(t, "n2", opts{port: port, dataDir: dir, join: []string{n0.g.Addr()}})
	for _, n := range []*node{n0, n1, back} {
		waitFor(t, n.reg, 20*time.Second, "n2's newer state everywhere", func(s *registry.Snapshot) bool {
			ids := []string{}
			for _, in := range s.ServiceInstances("redis") {
				if in.Status() != registry.StatusPassing {
					return false
				}
				ids = append(ids, in.Service.ID)
			}
			return strings.Join(ids, ",") == "redis1,redis3"
		})
	}
}

func TestForceLeave(t *testing.T) {
	nodes := cluster(t, 3)
	register(t, nodes[2], "redis1", 8000)
	waitFor(t, nodes[0].reg, 10*time.Second, "redis1", hasInstance("n2", "redis1", true))
	// A live node answers the ping and stays, as a Consul node refutes a
	// force-leave; this node cannot be forced out.
	if err := nodes[0].g.ForceLeave("n1"); err != nil {
		t.Errorf("force-leave of a live node: %v", err)
	}
	if ms := nodes[0].g.Members(); len(ms) != 3 || ms[1].Name != "n1" || ms[1].Status != registry.MemberAlive {
		t.Errorf("a live node was forced out: %+v", ms)
	}
	if err := nodes[0].g.ForceLeave("n0"); !errors.Is(err, registry.ErrProtected) {
		t.Errorf("force-leave of this node: %v", err)
	}
	nodes[2].crash()
	waitFor(t, nodes[0].reg, 20*time.Second, "n2 critical", func(s *registry.Snapshot) bool {
		ins := s.ServiceInstances("redis")
		return len(ins) == 1 && ins[0].Status() == registry.StatusCritical
	})
	if err := nodes[0].g.ForceLeave("n2"); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes[:2] {
		waitFor(t, n.reg, 10*time.Second, "n2 forced out", func(s *registry.Snapshot) bool {
			_, ok := s.Node("n2")
			return !ok
		})
	}
}

func TestReapAfterReconnectTimeout(t *testing.T) {
	nodes := cluster(t, 2)
	register(t, nodes[1], "redis1", 8000)
	waitFor(t, nodes[0].reg, 10*time.Second, "redis1", hasInstance("n1", "redis1", true))
	nodes[1].crash()
	waitFor(t, nodes[0].reg, 20*time.Second, "n1 critical", func(s *registry.Snapshot) bool {
		ins := s.ServiceInstances("redis")
		return len(ins) == 1 && ins[0].Status() == registry.StatusCritical
	})
	g := nodes[0].g
	g.reap(time.Now().Add(71 * time.Hour))
	if _, ok := nodes[0].reg.Snapshot().Node("n1"); !ok {
		t.Fatal("n1 reaped before 72h")
	}
	g.reap(time.Now().Add(73 * time.Hour))
	if _, ok := nodes[0].reg.Snapshot().Node("n1"); ok {
		t.Fatal("n1 not reaped after 72h")
	}
}

func TestEncryption(t *testing.T) {
	key, _ := ParseKey(NewKey())
	n0 := startNode(t, "n0", opts{key: key})
	n1 := startNode(t, "n1", opts{key: key, join: []string{n0.g.Addr()}})
	for _, n := range []*node{n0, n1} {
		waitFor(t, n.reg, 10*time.Second, "joined with the key", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 2 })
	}

	other, _ := ParseKey(NewKey())
	for _, k := range [][]byte{other, nil} {
		rc := registry.DefaultConfig()
		rc.NodeName, rc.Address = "intruder", "127.0.0.1"
		reg, _ := registry.New(rc)
		gc := DefaultConfig()
		gc.Registry, gc.BindAddr, gc.BindPort, gc.EncryptKey = reg, "127.0.0.1", 0, k
		gc.StartJoin = []string{n0.g.Addr()}
		gc.Memberlist = func(c *memberlist.Config) { fast(c); c.TCPTimeout = time.Second }
		g, err := New(gc)
		if err != nil {
			t.Fatal(err)
		}
		err = g.Run(context.Background())
		if err == nil || !strings.Contains(err.Error(), "joining") {
			t.Errorf("key %v: joining with the wrong key: %v", k != nil, err)
		}
	}
	for _, n := range []*node{n0, n1} {
		if _, ok := n.reg.Snapshot().Node("intruder"); ok {
			t.Errorf("an intruder got into %s's catalog", n.reg.NodeName())
		}
		for _, m := range n.g.Members() {
			if m.Name == "intruder" {
				t.Errorf("an intruder is among %s's members: %+v", n.reg.NodeName(), m)
			}
		}
	}
}

func TestParseKey(t *testing.T) {
	for _, c := range []struct {
		in string
		ok bool
	}{{NewKey(), true}, {"cg8StVXbQJ0gPvMd9o7yrg==", true}, {"not base64!", false}, {"YWJj", false}} {
		_, err := ParseKey(c.in)
		if (err == nil) != c.ok {
			t.Errorf("ParseKey(%q) = %v", c.in, err)
		}
	}
}

// TestCluster25 runs in memory (memnet_test.go): it tests that a
// registration reaches 25 nodes, not how fast UDP is on a loaded machine,
// which BenchmarkPropagation measures.
func TestCluster25(t *testing.T) {
	nodes := clusterOn(t, 25, &memNet{})
	register(t, nodes[24], "redis1", 8000)
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Generous: speed is BenchmarkPropagation's to measure. Under
			// -race beside other packages' tests, 25 nodes in one process
			// once took over 10 s here (a lost broadcast waits for
			// push-pull, every 2 s with a random peer).
			if !waitUntil(n.reg, 30*time.Second, hasInstance("n24", "redis1", true)) {
				t.Errorf("redis1 did not reach %s; it sees %s", n.reg.NodeName(), describe(n.reg.Snapshot()))
			}
		}()
	}
	wg.Wait()
}

// TestCheckStatusReplicates: a check result on the owning node (what the
// health package reports) reaches every node, and so their ?passing views.
func TestCheckStatusReplicates(t *testing.T) {
	nodes := cluster(t, 3)
	svc := registry.Service{ID: "redis1", Name: "redis", Port: 8000, Weights: registry.Weights{Passing: 1, Warning: 1}}
	check := registry.Check{CheckID: "service:redis1", Name: "ttl", Status: registry.StatusCritical, Definition: registry.CheckDefinition{TTL: registry.Duration(time.Minute)}}
	if err := nodes[0].reg.RegisterService(svc, []registry.Check{check}, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	status := func(want registry.Status, output string) func(*registry.Snapshot) bool {
		return func(s *registry.Snapshot) bool {
			ins := s.ServiceInstances("redis")
			if len(ins) != 1 || ins[0].Status() != want {
				return false
			}
			for _, c := range ins[0].Checks {
				if c.CheckID == "service:redis1" {
					return c.Output == output && c.ServiceName == "redis"
				}
			}
			return false
		}
	}
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "critical at first", status(registry.StatusCritical, ""))
	}
	nodes[0].reg.UpdateCheck("service:redis1", registry.StatusPassing, "all good")
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "passing everywhere", status(registry.StatusPassing, "all good"))
	}
	nodes[0].reg.UpdateCheck("service:redis1", registry.StatusWarning, "slow")
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "warning everywhere", status(registry.StatusWarning, "slow"))
	}
}

// TestKVReplicates: a write on any node reaches every node, concurrent
// writes to one key settle on the same value everywhere, deletes replicate,
// and a node that was down catches up without bringing a deleted key back.
func TestKVReplicates(t *testing.T) {
	dir := t.TempDir()
	n0 := startNode(t, "n0", opts{})
	n1 := startNode(t, "n1", opts{join: []string{n0.g.Addr()}})
	n2 := startNode(t, "n2", opts{dataDir: dir, join: []string{n0.g.Addr()}})
	nodes := []*node{n0, n1, n2}
	value := func(key string) func(*registry.Snapshot) string {
		return func(s *registry.Snapshot) string {
			if e, ok := s.KV(key); ok {
				return string(e.Value)
			}
			return "<none>"
		}
	}
	is := func(key, want string) func(*registry.Snapshot) bool {
		return func(s *registry.Snapshot) bool { return value(key)(s) == want }
	}
	n0.reg.KVPut("app/db", []byte("v1"), 0, nil)
	n2.reg.KVPut("app/old", []byte("x"), 0, nil)
	for _, n := range nodes {
		waitFor(t, n.reg, 10*time.Second, "app/db", is("app/db", "v1"))
		waitFor(t, n.reg, 10*time.Second, "app/old", is("app/old", "x"))
	}

	// Two writers at once: whichever wins, it wins everywhere.
	var wg sync.WaitGroup
	for i, n := range []*node{n1, n2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.reg.KVPut("app/flag", []byte(fmt.Sprint("from-", i)), 0, nil)
		}()
	}
	wg.Wait()
	// Re-check whenever any of the three changes: the last to settle may
	// be any of them.
	var final string
	for timeout := time.After(10 * time.Second); ; {
		s0, s1, s2 := n0.reg.Snapshot(), n1.reg.Snapshot(), n2.reg.Snapshot()
		v0, v1, v2 := value("app/flag")(s0), value("app/flag")(s1), value("app/flag")(s2)
		if v0 != "<none>" && v0 == v1 && v0 == v2 {
			final = v0
			break
		}
		select {
		case <-s0.Changed():
		case <-s1.Changed():
		case <-s2.Changed():
		case <-timeout:
			t.Fatalf("app/flag did not settle: %s / %s / %s", v0, v1, v2)
		}
	}

	// n2 goes down; meanwhile app/old is deleted and app/db changes.
	port := int(n2.g.ml.LocalNode().Port)
	n2.crash()
	n0.reg.KVDelete("app/old", false, nil)
	n1.reg.KVPut("app/db", []byte("v2"), 0, nil)
	back := startNode(t, "n2", opts{port: port, dataDir: dir, join: []string{n0.g.Addr()}})
	if got := value("app/old")(back.reg.Snapshot()); got != "x" {
		t.Fatalf("the restarted node did not keep its KV on disk: app/old = %q", got)
	}
	for _, n := range []*node{n0, n1, back} {
		waitFor(t, n.reg, 20*time.Second, "caught up", func(s *registry.Snapshot) bool {
			return is("app/db", "v2")(s) && is("app/old", "<none>")(s) && is("app/flag", final)(s)
		})
	}
}

// TestKeyRotation rotates the gossip key of a running cluster without
// downtime: install, use, remove; a node with only the new key then joins,
// and a restarted node keeps the rotated keyring from its data dir.
func TestKeyRotation(t *testing.T) {
	oldKey, _ := ParseKey(NewKey())
	newKeyS := NewKey()
	newKey, _ := ParseKey(newKeyS)
	dir := t.TempDir()
	keyring := func(c *Config) { c.KeyringFile = dir + "/keyring.json" }
	n0 := startNode(t, "n0", opts{key: oldKey})
	n1 := startNode(t, "n1", opts{key: oldKey, join: []string{n0.g.Addr()}})
	n2 := startNode(t, "n2", opts{key: oldKey, join: []string{n0.g.Addr()}, tweak: keyring})
	for _, n := range []*node{n0, n1, n2} {
		waitFor(t, n.reg, 10*time.Second, "3 nodes", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 3 })
	}
	run := func(op, key string) []KeyringResponse {
		t.Helper()
		rs, err := n0.g.Keyring(op, key)
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if len(rs) != 3 {
			t.Fatalf("%s: %d answers, want 3: %+v", op, len(rs), rs)
		}
		for _, r := range rs {
			if r.Error != "" {
				t.Fatalf("%s on %s: %s", op, r.Node, r.Error)
			}
		}
		return rs
	}
	run("install", newKeyS)
	for _, r := range run("list", "") {
		if len(r.Keys) != 2 {
			t.Errorf("%s has %d keys after install", r.Node, len(r.Keys))
		}
	}
	run("use", newKeyS)
	oldS := base64Key(oldKey)
	rs := run("remove", oldS)
	for _, r := range rs {
		if len(r.Keys) != 1 || r.Primary != newKeyS {
			t.Errorf("%s after the rotation: %+v", r.Node, r)
		}
	}
	// The cluster still gossips: a registration reaches every node.
	register(t, n1, "redis1", 8000)
	for _, n := range []*node{n0, n1, n2} {
		waitFor(t, n.reg, 10*time.Second, "gossip after the rotation", hasInstance("n1", "redis1", true))
	}
	// A node with only the new key joins; one with only the old key cannot.
	n3 := startNode(t, "n3", opts{key: newKey, join: []string{n0.g.Addr()}})
	waitFor(t, n3.reg, 10*time.Second, "n3 joined with the new key", hasInstance("n1", "redis1", true))
	// The primary key cannot be removed: every node says so.
	rs, _ = n0.g.Keyring("remove", newKeyS)
	for _, r := range rs {
		if r.Error == "" {
			t.Errorf("%s removed its primary key", r.Node)
		}
	}
	// n2 restarts with its old -encrypt key; its saved keyring wins.
	port := int(n2.g.ml.LocalNode().Port)
	n2.stop()
	back := startNode(t, "n2", opts{port: port, key: oldKey, join: []string{n0.g.Addr()}, tweak: keyring})
	waitFor(t, back.reg, 10*time.Second, "n2 rejoined with the saved keyring", hasInstance("n1", "redis1", true))
}

func base64Key(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// TestMissedBroadcastRepaired: a change whose broadcast nobody heard (no
// gossip rounds, push/pull an hour away) still reaches the other node within
// seconds, through the digest exchange.
//
// Probes are off too (quietGossip): they carry broadcasts, and memberlist
// leaves a probe's goroutine waiting out its timeout after Shutdown, which
// goleak then reported now and then.
func TestMissedBroadcastRepaired(t *testing.T) {
	a := startNode(t, "a", opts{tweak: quietGossip})
	b := startNode(t, "b", opts{tweak: quietGossip, join: []string{a.g.Addr()}})
	waitFor(t, b.reg, 10*time.Second, "a in b's catalog", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 2 })
	register(t, a, "missed", 8000)
	a.g.queue.Reset() // the broadcast is lost before anyone hears it
	waitFor(t, b.reg, 10*time.Second, "the missed registration", hasInstance("a", "missed", false))
	if err := a.reg.DeregisterService("missed"); err != nil {
		t.Fatal(err)
	}
	a.g.queue.Reset()
	waitFor(t, b.reg, 10*time.Second, "the missed deregistration", func(s *registry.Snapshot) bool { return len(s.ServiceInstances("redis")) == 0 })
}

// A keyring change the data dir cannot take is refused on that node, and
// its keyring in memory stays as it was, so memory and disk agree.
func TestKeyringSaveFails(t *testing.T) {
	key, _ := ParseKey(NewKey())
	newKeyS := NewKey()
	dir := t.TempDir()
	file := filepath.Join(dir, "keyring.json")
	n0 := startNode(t, "n0", opts{key: key, tweak: func(c *Config) { c.KeyringFile = file }})
	// A directory where the temp file goes: the write fails, as on a full
	// disk (root ignores permissions, so they cannot make it fail).
	if err := os.MkdirAll(file+".tmp."+strconv.Itoa(os.Getpid()), 0o700); err != nil {
		t.Fatal(err)
	}
	rs, err := n0.g.Keyring("install", newKeyS)
	if err != nil || len(rs) != 1 || rs[0].Error == "" || !strings.Contains(rs[0].Error, "saving the keyring") {
		t.Fatalf("install with an unwritable keyring file: %+v %v", rs, err)
	}
	if got := len(n0.g.keyring.GetKeys()); got != 1 {
		t.Errorf("the keyring in memory has %d keys after a refused install, want 1", got)
	}
}

// A client looks for the servers among the members by their gossiped role:
// MembersTagged lists those, named and filled in as Members lists them.
func TestMembersTagged(t *testing.T) {
	mem := &memNet{}
	server := startNode(t, "s1", opts{mem: mem, tweak: func(c *Config) {
		c.Tags = map[string]string{"role": "consul", "id": "7b3c8f0e-1111-2222-3333-444455556666"}
	}})
	client := startNode(t, "c1", opts{mem: mem, join: []string{server.g.Addr()}})
	startNode(t, "c2", opts{mem: mem, join: []string{server.g.Addr()}})
	waitFor(t, client.reg, 60*time.Second, "3 nodes in the catalog", func(s *registry.Snapshot) bool { return len(s.Nodes()) == 3 })
	var got []registry.Member
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = client.g.MembersTagged("role", "consul"); len(got) == 1 && got[0].Tags["id"] != "" {
			break
		}
	}
	if len(got) != 1 || got[0].Name != "s1" || got[0].Status != registry.MemberAlive || got[0].Tags["id"] == "" {
		t.Fatalf("members tagged role=consul: %+v, want s1 alone, with its id", got)
	}
	if all := client.g.Members(); len(all) != 3 {
		t.Fatalf("members: %d, want 3", len(all))
	}
	if none := client.g.MembersTagged("role", "nosuch"); len(none) != 0 {
		t.Fatalf("members tagged role=nosuch: %+v", none)
	}
}
