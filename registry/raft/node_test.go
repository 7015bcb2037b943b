package raft

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/deploy/eventually"
)

// fast shortens Raft's timeouts for tests, not so far that a loaded
// machine (the suite runs packages in parallel, under -race) makes a
// follower miss heartbeats and depose a healthy leader mid-test.
func fast(c *hraft.Config) {
	c.HeartbeatTimeout = 500 * time.Millisecond
	c.ElectionTimeout = 500 * time.Millisecond
	c.LeaderLeaseTimeout = 250 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

type testServer struct {
	n       *Node
	cancel  context.CancelFunc
	done    chan error
	cfg     Config
	stopped atomic.Bool
}

func startServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	cfg.Tune = fast
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &testServer{n: n, cancel: cancel, done: make(chan error, 1), cfg: cfg}
	s.cfg.Bind = n.Addr() // a restart keeps the address the group knows
	go func() { s.done <- n.Run(ctx) }()
	t.Cleanup(s.stop)
	return s
}

func (s *testServer) stop() {
	if s.stopped.CompareAndSwap(false, true) {
		s.cancel()
		<-s.done
	}
}

func leaderOf(servers []*testServer) *testServer {
	for _, s := range servers {
		if !s.stopped.Load() && s.n.IsLeader() {
			return s
		}
	}
	return nil
}

// A group of three on real sockets with data dirs: writes through the
// leader reach every server, a killed leader is replaced, and the old one
// comes back from its data dir and catches up.
func TestGroupOfThree(t *testing.T) {
	dir := t.TempDir()
	var servers []*testServer
	var members []Server
	for i := range 3 {
		s := startServer(t, Config{ID: fmt.Sprintf("s%d", i), Bind: "127.0.0.1:0", DataDir: filepath.Join(dir, fmt.Sprint(i))})
		servers = append(servers, s)
		members = append(members, Server{ID: s.n.ID(), Address: s.n.Addr(), Voter: true})
	}
	for _, s := range servers {
		if err := s.n.Bootstrap(members); err != nil {
			t.Fatal(err)
		}
	}
	var lead *testServer
	eventually.True(t, 10*time.Second, "a leader", func() bool { lead = leaderOf(servers); return lead != nil })

	// A follower refuses writes and names why (once it has heard from the
	// leader: the barrier that made the leader ready needed only one).
	for _, s := range servers {
		if s != lead {
			eventually.True(t, 5*time.Second, s.n.ID()+" knows the leader", func() bool { a, _ := s.n.Leader(); return a != "" })
			if _, err := s.n.KV(KVOp{Verb: KVSet, Key: "x"}); err != ErrNotLeader {
				t.Errorf("a write on a follower: %v, want ErrNotLeader", err)
			}
		}
	}
	for i := range 20 {
		if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: fmt.Sprintf("k%02d", i), Value: []byte{byte(i)}}); err != nil || !r.OK {
			t.Fatalf("write %d: %+v %v", i, r, err)
		}
	}
	want := lead.n.State().Index()
	for _, s := range servers {
		eventually.True(t, 5*time.Second, s.n.ID()+" catches up", func() bool { return s.n.State().Index() >= want })
		if got := len(s.n.State().KVList("k")); got != 20 {
			t.Errorf("%s holds %d keys", s.n.ID(), got)
		}
	}
	if cfg, err := lead.n.Configuration(); err != nil || len(cfg) != 3 {
		t.Errorf("configuration: %v %v", cfg, err)
	}
	if _, err := lead.n.ConsistentState(); err != nil {
		t.Errorf("a consistent read on the leader: %v", err)
	}

	// The leader goes; the other two elect one and go on.
	old := lead
	old.stop()
	eventually.True(t, 10*time.Second, "a new leader", func() bool { lead = leaderOf(servers); return lead != nil && lead != old })
	if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: "after", Value: []byte("1")}); err != nil || !r.OK {
		t.Fatalf("write after failover: %+v %v", r, err)
	}
	// It comes back from its data dir and catches up.
	back := startServer(t, old.cfg)
	for i, s := range servers {
		if s == old {
			servers[i] = back
		}
	}
	eventually.True(t, 10*time.Second, "the restarted server catches up", func() bool {
		_, ok := back.n.State().KV("after")
		return ok && len(back.n.State().KVList("k")) == 20
	})
}

// Without a quorum nothing is written and no consistent read is answered.
func TestNoQuorum(t *testing.T) {
	var servers []*testServer
	var members []Server
	for i := range 3 {
		s := startServer(t, Config{ID: fmt.Sprintf("q%d", i), Bind: "127.0.0.1:0"})
		servers = append(servers, s)
		members = append(members, Server{ID: s.n.ID(), Address: s.n.Addr(), Voter: true})
	}
	for _, s := range servers {
		s.n.Bootstrap(members)
	}
	var lead *testServer
	eventually.True(t, 10*time.Second, "a leader", func() bool { lead = leaderOf(servers); return lead != nil })
	for _, s := range servers {
		if s != lead {
			s.stop()
		}
	}
	// The lone leader steps down once its lease runs out; until then a
	// write cannot commit.
	if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: "lost"}); err == nil {
		t.Fatalf("a write without a quorum answered %+v", r)
	}
	eventually.True(t, 5*time.Second, "the leader steps down", func() bool { return !lead.n.IsLeader() })
	if _, err := lead.n.ConsistentState(); err == nil {
		t.Error("a consistent read without a quorum was answered")
	}
	if _, ok := lead.n.State().KV("lost"); ok {
		t.Error("an uncommitted write is in the state")
	}
}
