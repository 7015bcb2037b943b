package raft

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

// member is a server as the agent runs it: a ServerPort carrying Raft and
// the internal HTTP (PeersHandler), and a Node on it.
type member struct {
	n       *Node
	port    *ServerPort
	peer    Peer
	opts    memberOpts
	cancel  context.CancelFunc
	done    chan error
	stopped atomic.Bool
	httpEnd func()
}

type memberOpts struct {
	id, name string
	expect   int
	dir      string        // empty: in memory
	bind     string        // empty: 127.0.0.1:0
	cleanup  time.Duration // CleanupDeadServers; 0: the default
	sec      *Security     // the port's; nil: plain
}

func startMember(t testing.TB, o memberOpts) *member {
	t.Helper()
	if o.name == "" {
		o.name = o.id
	}
	if o.bind == "" {
		o.bind = "127.0.0.1:0"
	}
	port, err := ListenServerPort(o.bind, "", o.sec)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.DataDir, cfg.Port, cfg.Tune = o.id, o.dir, port, fast
	if o.cleanup != 0 {
		cfg.CleanupDeadServers = o.cleanup
	}
	n, err := New(cfg)
	if err != nil {
		port.Close()
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(PeersPath, n.PeersHandler())
	srv := &http.Server{Handler: mux}
	httpDone := make(chan struct{})
	go func() { srv.Serve(port.HTTP()); close(httpDone) }()
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{n: n, port: port, opts: o, cancel: cancel, done: make(chan error, 1),
		peer: Peer{ID: o.id, Name: o.name, Addr: port.Addr(), Expect: o.expect, Status: registry.MemberAlive}}
	m.opts.bind = port.Addr() // a restart keeps the address
	m.httpEnd = func() { srv.Shutdown(context.Background()); <-httpDone }
	go func() { m.done <- n.Run(ctx) }()
	t.Cleanup(m.stop)
	return m
}

func (m *member) stop() {
	if m.stopped.CompareAndSwap(false, true) {
		m.cancel()
		<-m.done
		m.httpEnd()
		m.port.Close()
	}
}

// with answers m's peer in another status.
func (m *member) with(st registry.MemberStatus, since time.Time) Peer {
	p := m.peer
	p.Status, p.Since = st, since
	return p
}

func peersOf(ms ...*member) []Peer {
	var out []Peer
	for _, m := range ms {
		out = append(out, m.peer)
	}
	return out
}

// reconcileAll tells every member that all of them are alive.
func reconcileAll(ms ...*member) {
	for _, m := range ms {
		m.n.Reconcile(m.peer, peersOf(ms...))
	}
}

func waitLeader(t testing.TB, ms ...*member) *member {
	t.Helper()
	var lead *member
	eventually.True(t, 10*time.Second, "a leader", func() bool {
		for _, m := range ms {
			if !m.stopped.Load() && m.n.IsLeader() {
				lead = m
				return true
			}
		}
		return false
	})
	return lead
}

// setKey writes key through whichever of ms leads and answers that
// leader, as a client would: a write refused or left uncertain by a
// leader change (elections happen on a loaded machine) is tried again on
// the next leader; a set may be repeated.
func setKey(t *testing.T, key string, ms ...*member) *member {
	t.Helper()
	var lead *member
	eventually.NoError(t, 20*time.Second, "a write of "+key, func() error {
		lead = waitLeader(t, ms...)
		r, err := lead.n.KV(KVOp{Verb: KVSet, Key: key, Value: []byte("v")})
		if err == nil && !r.OK {
			err = fmt.Errorf("%+v", r)
		}
		return err
	})
	return lead
}

func waitKey(t *testing.T, key string, ms ...*member) {
	t.Helper()
	for _, m := range ms {
		eventually.True(t, 10*time.Second, m.n.ID()+" has "+key, func() bool { _, ok := m.n.State().KV(key); return ok })
	}
}

func ids(t *testing.T, m *member) []string {
	t.Helper()
	cfg, err := m.n.Configuration()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range cfg {
		out = append(out, s.ID)
	}
	slices.Sort(out)
	return out
}

func waitVoters(t testing.TB, m *member, want ...string) {
	t.Helper()
	slices.Sort(want)
	eventually.NoError(t, 10*time.Second, fmt.Sprintf("voters %v", want), func() error {
		cfg, err := m.n.Configuration()
		if err != nil {
			return err
		}
		var got []string
		for _, s := range cfg {
			if s.Voter {
				got = append(got, s.ID)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("voters %v", got)
		}
		return nil
	})
}

// settle waits until m's loop has finished a pass on what it was last
// handed.
func settle(t *testing.T, m *member) {
	t.Helper()
	m.n.group.mu.Lock()
	gen := m.n.group.gen
	m.n.group.mu.Unlock()
	eventually.True(t, 10*time.Second, m.n.ID()+" reconciles", func() bool { return m.n.group.done.Load() >= gen })
}

func TestBootstrapExpectThree(t *testing.T) {
	var ms []*member
	for i := range 3 {
		ms = append(ms, startMember(t, memberOpts{id: fmt.Sprintf("e%d", i), expect: 3}))
	}
	// Two of three seen: nobody bootstraps.
	for _, m := range ms[:2] {
		m.n.Reconcile(m.peer, peersOf(ms[:2]...))
		settle(t, m)
		if m.n.raft.LastIndex() != 0 {
			t.Fatalf("%s bootstrapped with two of three", m.n.ID())
		}
	}
	reconcileAll(ms...)
	lead := waitLeader(t, ms...)
	waitVoters(t, lead, "e0", "e1", "e2")
	setKey(t, "k", ms...)
	waitKey(t, "k", ms...)
	for _, m := range ms {
		if got := ids(t, m); !slices.Equal(got, []string{"e0", "e1", "e2"}) {
			t.Errorf("%s's configuration: %v", m.n.ID(), got)
		}
	}
	// The leader's view for /v1/operator/raft/configuration.
	eventually.NoError(t, 10*time.Second, "RaftServers", func() error {
		rs := lead.n.RaftServers()
		leaders := 0
		for _, s := range rs {
			if s.Leader {
				leaders++
				if s.ID != lead.n.ID() {
					return fmt.Errorf("leader flag on %s", s.ID)
				}
			}
			if s.Node != s.ID || !s.Voter || s.ProtocolVersion != "3" || s.LastIndex == 0 || s.Address == "" {
				return fmt.Errorf("%+v", s)
			}
		}
		if len(rs) != 3 || leaders != 1 {
			return fmt.Errorf("%+v", rs)
		}
		return nil
	})
}

func TestBootstrapExpectOne(t *testing.T) {
	m := startMember(t, memberOpts{id: "solo", expect: 1})
	m.n.Reconcile(m.peer, nil)
	waitLeader(t, m)
	waitVoters(t, m, "solo")
}

func TestBootstrapExpectMismatch(t *testing.T) {
	a := startMember(t, memberOpts{id: "ma", expect: 2})
	b := startMember(t, memberOpts{id: "mb", expect: 3})
	reconcileAll(a, b)
	settle(t, a)
	settle(t, b)
	for _, m := range []*member{a, b} {
		if i := m.n.raft.LastIndex(); i != 0 {
			t.Errorf("%s bootstrapped (last index %d)", m.n.ID(), i)
		}
	}
}

// A server without bootstrap-expect (pier agent -server -join X) is added
// by the leader once gossip shows it, and receives what was written
// before.
func TestJoinWithoutExpect(t *testing.T) {
	lead := startMember(t, memberOpts{id: "j0", expect: 1})
	lead.n.Reconcile(lead.peer, nil)
	waitLeader(t, lead)
	for i := range 5 {
		if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: fmt.Sprintf("before%d", i), Value: []byte("v")}); err != nil || !r.OK {
			t.Fatalf("write: %+v %v", r, err)
		}
	}
	j := startMember(t, memberOpts{id: "j1"})
	j.n.Reconcile(j.peer, peersOf(lead, j))
	settle(t, j)
	if j.n.raft.LastIndex() != 0 {
		t.Fatal("a server without expect bootstrapped")
	}
	lead.n.Reconcile(lead.peer, peersOf(lead, j))
	waitVoters(t, lead, "j0", "j1")
	waitKey(t, "before4", j)
	if got := len(j.n.State().KVList("before")); got != 5 {
		t.Errorf("the joined server holds %d keys", got)
	}
}

// groupOf starts n servers with bootstrap-expect n and waits for their
// leader.
func groupOf(t testing.TB, prefix string, count int, o memberOpts) ([]*member, *member) {
	t.Helper()
	var ms []*member
	for i := range count {
		mo := o
		mo.id, mo.expect = fmt.Sprintf("%s%d", prefix, i), count
		if o.dir != "" {
			mo.dir = filepath.Join(o.dir, mo.id)
		}
		ms = append(ms, startMember(t, mo))
	}
	reconcileAll(ms...)
	lead := waitLeader(t, ms...)
	var all []string
	for _, m := range ms {
		all = append(all, m.n.ID())
	}
	waitVoters(t, lead, all...)
	return ms, lead
}

func others(ms []*member, not *member) []*member {
	return slices.DeleteFunc(slices.Clone(ms), func(m *member) bool { return m == not })
}

func TestCleanupFailedServer(t *testing.T) {
	ms, lead := groupOf(t, "f", 3, memberOpts{})
	rest := others(ms, lead)
	dead, alive := rest[0], rest[1]
	dead.stop()

	// Failed for less than CleanupDeadServers (30s): it stays.
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, alive.peer, dead.with(registry.MemberFailed, time.Now())})
	settle(t, lead)
	if got := ids(t, lead); len(got) != 3 {
		t.Fatalf("removed before its time: %v", got)
	}
	// Failed for longer: removed.
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, alive.peer, dead.with(registry.MemberFailed, time.Now().Add(-time.Minute))})
	waitVoters(t, lead, lead.n.ID(), alive.n.ID())
}

// Since left zero, the Node counts from when it first saw the failure.
func TestCleanupCountsFromFirstSeen(t *testing.T) {
	ms, lead := groupOf(t, "c", 3, memberOpts{cleanup: 300 * time.Millisecond})
	rest := others(ms, lead)
	dead, alive := rest[0], rest[1]
	dead.stop()
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, alive.peer, dead.with(registry.MemberFailed, time.Time{})})
	// No further Reconcile: the loop runs again by itself when it is due.
	waitVoters(t, lead, lead.n.ID(), alive.n.ID())
}

func TestCleanupLeftServerAtOnce(t *testing.T) {
	ms, lead := groupOf(t, "l", 3, memberOpts{})
	rest := others(ms, lead)
	gone, alive := rest[0], rest[1]
	gone.stop()
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, alive.peer, gone.with(registry.MemberLeft, time.Now())})
	waitVoters(t, lead, lead.n.ID(), alive.n.ID())
}

// Gossip says two of three voters failed long ago, but they are in fact
// alive: removing them would hand the group to one server; nothing is
// removed. One of three may go.
func TestCleanupKeepsQuorum(t *testing.T) {
	ms, lead := groupOf(t, "g", 3, memberOpts{})
	rest := others(ms, lead)
	long := time.Now().Add(-time.Hour)
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, rest[0].with(registry.MemberFailed, long), rest[1].with(registry.MemberFailed, long)})
	settle(t, lead)
	if got := ids(t, lead); len(got) != 3 {
		t.Fatalf("removed a quorum's worth: %v", got)
	}
	// One may go, once it does not answer at its address either (one
	// that still answers as itself is kept: moved.go).
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, rest[0].with(registry.MemberFailed, long), rest[1].peer})
	settle(t, lead)
	if got := ids(t, lead); len(got) != 3 {
		t.Fatalf("removed a server that answers as itself: %v", got)
	}
	rest[0].stop()
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, rest[0].with(registry.MemberFailed, long), rest[1].peer})
	waitVoters(t, lead, lead.n.ID(), rest[1].n.ID())
}

// A server that left said so itself: it goes even when that leaves a
// group of one (no guess to guard against). It is removed while it still
// runs, as a server leaving gracefully waits to be removed; a group of two
// that lost one could not commit the removal.
func TestLeftServerOfTwoRemoved(t *testing.T) {
	ms, lead := groupOf(t, "t", 2, memberOpts{})
	gone := others(ms, lead)[0]
	lead.n.Reconcile(lead.peer, []Peer{lead.peer, gone.with(registry.MemberLeft, time.Now())})
	waitVoters(t, lead, lead.n.ID())
	gone.stop()
	eventually.NoError(t, 10*time.Second, "a write on the survivor", func() error {
		r, err := lead.n.KV(KVOp{Verb: KVSet, Key: "alone", Value: []byte("v")})
		if err == nil && !r.OK {
			err = fmt.Errorf("%+v", r)
		}
		return err
	})
}

// A server whose data dir was wiped comes back under the same node name
// with a new ID: the leader removes the old entry and adds it, and it
// catches up.
func TestWipedServerRejoins(t *testing.T) {
	dir := t.TempDir()
	ms, lead := groupOf(t, "w", 3, memberOpts{dir: dir})
	for i := range 5 {
		lead = setKey(t, fmt.Sprintf("w%d", i), ms...)
	}
	old := others(ms, lead)[0]
	old.stop()
	if err := os.RemoveAll(old.opts.dir); err != nil {
		t.Fatal(err)
	}
	o := old.opts
	o.id = old.opts.id + "-new" // the agent makes a new node ID with its data dir
	back := startMember(t, o)
	if back.peer.Name != old.peer.Name || back.peer.Addr != old.peer.Addr {
		t.Fatalf("not the same node: %+v %+v", back.peer, old.peer)
	}
	now := []*member{}
	for _, m := range ms {
		if m != old {
			now = append(now, m)
		}
	}
	now = append(now, back)
	reconcileAll(now...)
	var want []string
	for _, m := range now {
		want = append(want, m.n.ID())
	}
	waitVoters(t, lead, want...)
	waitKey(t, "w4", back)
	if got := len(back.n.State().KVList("w")); got != 5 {
		t.Errorf("the rejoined server holds %d keys", got)
	}
	// Its own bootstrap-expect saw a group and stood down.
	settle(t, back)
	if !back.n.group.bootstrapped {
		t.Error("the rejoined server still means to bootstrap")
	}
}

// A server restarted on its data dir keeps its configuration and does not
// bootstrap again.
func TestRestartKeepsConfiguration(t *testing.T) {
	dir := t.TempDir()
	a := startMember(t, memberOpts{id: "r0", expect: 1, dir: filepath.Join(dir, "r0")})
	a.n.Reconcile(a.peer, nil)
	waitLeader(t, a)
	b := startMember(t, memberOpts{id: "r1", dir: filepath.Join(dir, "r1")})
	a.n.Reconcile(a.peer, peersOf(a, b))
	waitVoters(t, a, "r0", "r1")
	if r, err := a.n.KV(KVOp{Verb: KVSet, Key: "kept", Value: []byte("v")}); err != nil || !r.OK {
		t.Fatalf("write: %+v %v", r, err)
	}
	waitKey(t, "kept", b)
	a.stop()
	b.stop()

	// Alone with expect 1 it would lead at once if it bootstrapped anew.
	a2 := startMember(t, a.opts)
	a2.n.Reconcile(a2.peer, nil)
	settle(t, a2)
	if got := ids(t, a2); !slices.Equal(got, []string{"r0", "r1"}) {
		t.Fatalf("configuration after restart: %v", got)
	}
	if a2.n.IsLeader() {
		t.Fatal("leads alone: bootstrapped again")
	}
	b2 := startMember(t, b.opts)
	reconcileAll(a2, b2)
	lead := waitLeader(t, a2, b2)
	if _, ok := lead.n.State().KV("kept"); !ok {
		t.Error("the write before the restart is gone")
	}
}

// A server restarted on its data dir but a new port is moved to its new
// address in place and goes on replicating.
func TestServerAddressChange(t *testing.T) {
	ms, lead := groupOf(t, "a", 3, memberOpts{dir: t.TempDir()})
	moved := others(ms, lead)[0]
	moved.stop()
	o := moved.opts
	o.bind = "127.0.0.1:0"
	back := startMember(t, o)
	if back.peer.Addr == moved.peer.Addr {
		t.Skip("the new port is the old one")
	}
	now := append(others(ms, moved), back)
	reconcileAll(now...)
	waitMoved(t, lead, back)
	setKey(t, "after-move", now...)
	waitKey(t, "after-move", back)
}

// A wiped server that comes back with the same ID and address is still in
// the configuration: the leader sends it everything again.
func TestWipedServerSameID(t *testing.T) {
	dir := t.TempDir()
	ms, lead := groupOf(t, "s", 3, memberOpts{dir: dir})
	lead = setKey(t, "old", ms...)
	wiped := others(ms, lead)[0]
	wiped.stop()
	if err := os.RemoveAll(wiped.opts.dir); err != nil {
		t.Fatal(err)
	}
	back := startMember(t, wiped.opts)
	reconcileAll(append(others(ms, wiped), back)...)
	waitKey(t, "old", back)
	if got := ids(t, lead); len(got) != 3 {
		t.Errorf("configuration: %v", got)
	}
}

func TestPeerFromMember(t *testing.T) {
	tags := map[string]string{"dc": "dc1", "build": "x"}
	maps.Copy(tags, ServerTags("id-1", "10.0.0.1:8300", 3))
	m := registry.Member{Name: "s1", Addr: "10.0.0.1", Port: 8301, Tags: tags, Status: registry.MemberFailed}
	p, ok := PeerFromMember(m, "dc1")
	want := Peer{ID: "id-1", Name: "s1", Addr: "10.0.0.1:8300", Expect: 3, Status: registry.MemberFailed}
	if !ok || p != want {
		t.Errorf("PeerFromMember: %+v %v, want %+v", p, ok, want)
	}
	if _, ok := PeerFromMember(m, "dc2"); ok {
		t.Error("a server of another datacenter is a peer")
	}
	m.Tags = map[string]string{"role": "node", "id": "c"}
	if _, ok := PeerFromMember(m, ""); ok {
		t.Error("a client is a peer")
	}
	m.Tags = map[string]string{"role": "consul", "id": "c"}
	if _, ok := PeerFromMember(m, ""); ok {
		t.Error("a server without a port tag is a peer")
	}
}

// A lone server restarted on a new port leads again and puts its new
// address into the configuration.
func TestLeaderAddressChange(t *testing.T) {
	m := startMember(t, memberOpts{id: "la", expect: 1, dir: t.TempDir()})
	m.n.Reconcile(m.peer, nil)
	waitLeader(t, m)
	m.stop()
	o := m.opts
	o.bind = "127.0.0.1:0"
	back := startMember(t, o)
	back.n.Reconcile(back.peer, nil)
	waitLeader(t, back)
	eventually.NoError(t, 10*time.Second, "its new address", func() error {
		cfg, err := back.n.Configuration()
		if err != nil || len(cfg) != 1 || cfg[0].Address != back.peer.Addr {
			return fmt.Errorf("%+v %v", cfg, err)
		}
		return nil
	})
}

// A server gossip sees alive whose server port does not answer is not
// made a voter: a group of one would need it for every commit.
func TestUnreachableServerNotAdded(t *testing.T) {
	m := startMember(t, memberOpts{id: "u0", expect: 1})
	m.n.Reconcile(m.peer, nil)
	waitLeader(t, m)
	gone, err := ListenServerPort("127.0.0.1:0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	ghost := Peer{ID: "ghost", Name: "ghost", Addr: gone.Addr(), Status: registry.MemberAlive}
	gone.Close()
	m.n.Reconcile(m.peer, []Peer{m.peer, ghost})
	settle(t, m)
	if got := ids(t, m); !slices.Equal(got, []string{"u0"}) {
		t.Fatalf("configuration: %v", got)
	}
	if r, err := m.n.KV(KVOp{Verb: KVSet, Key: "still", Value: []byte("v")}); err != nil || !r.OK {
		t.Fatalf("write: %+v %v", r, err)
	}
}

// A server without an expect counts towards another's expect, as in
// Consul, and is part of the group it bootstraps.
func TestBootstrapCountsServersWithoutExpect(t *testing.T) {
	a := startMember(t, memberOpts{id: "x0", expect: 2})
	b := startMember(t, memberOpts{id: "x1"})
	reconcileAll(a, b)
	lead := waitLeader(t, a, b)
	waitVoters(t, lead, "x0", "x1")
}

// A server restarted at a new address that gossip does not show yet (it
// still has the old one, failed) tells the leader itself, is moved in
// place and replicates, and is not removed when its failure outlasts
// CleanupDeadServers: it answers as itself at its new address.
func TestServerMovedSaysSo(t *testing.T) {
	ms, lead := groupOf(t, "m", 3, memberOpts{dir: t.TempDir(), cleanup: 300 * time.Millisecond})
	moved := others(ms, lead)[0]
	moved.stop()
	o := moved.opts
	o.bind = "127.0.0.1:0"
	back := startMember(t, o)
	if back.peer.Addr == moved.peer.Addr {
		t.Skip("the new port is the old one")
	}
	// Gossip's view everywhere: the old address, failed.
	failedOld := moved.with(registry.MemberFailed, time.Now())
	rest := others(ms, moved)
	for _, m := range rest {
		m.n.Reconcile(m.peer, []Peer{rest[0].peer, rest[1].peer, failedOld})
	}
	back.n.Reconcile(back.peer, []Peer{rest[0].peer, rest[1].peer})
	waitMoved(t, lead, back)
	if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: "after-move", Value: []byte("v")}); err != nil || !r.OK {
		t.Fatalf("write: %+v %v", r, err)
	}
	waitKey(t, "after-move", back)
	time.Sleep(500 * time.Millisecond) // past CleanupDeadServers: the loop runs by itself
	lead.n.Reconcile(lead.peer, []Peer{rest[0].peer, rest[1].peer, failedOld})
	settle(t, lead)
	if got := ids(t, lead); len(got) != 3 {
		t.Fatalf("the moved server was removed on gossip's word: %v", got)
	}
}

// waitMoved waits until lead's configuration of three voters has m at
// its address.
func waitMoved(t *testing.T, lead, m *member) {
	t.Helper()
	eventually.NoError(t, 10*time.Second, "the new address in the configuration", func() error {
		cfg, err := lead.n.Configuration()
		if err != nil {
			return err
		}
		for _, s := range cfg {
			if s.ID == m.n.ID() && s.Address == m.peer.Addr && s.Voter && len(cfg) == 3 {
				return nil
			}
		}
		return fmt.Errorf("%+v", cfg)
	})
}
