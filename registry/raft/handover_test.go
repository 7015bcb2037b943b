package raft

import (
	"fmt"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/deploy/eventually"
)

// A leader that stops on purpose hands the leadership to a follower first:
// the group never waits out an election timeout, and a write right after
// the stop is taken.
func TestLeaderHandsOverOnStop(t *testing.T) {
	var servers []*testServer
	var members []Server
	for i := range 3 {
		// Election timeouts far longer than the test's wait: only a
		// handover can give the group a new leader in time.
		s := startServer(t, Config{ID: fmt.Sprintf("h%d", i), Bind: "127.0.0.1:0", ApplyTimeout: 10 * time.Second})
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
	for _, s := range servers {
		s.n.raft.ReloadConfig(reloadable(s.n, 30*time.Second))
	}
	lead.stop()
	var next *testServer
	eventually.True(t, 5*time.Second, "a new leader well before an election timeout", func() bool {
		next = leaderOf(servers)
		return next != nil
	})
	if r, err := next.n.KV(KVOp{Verb: KVSet, Key: "after", Value: []byte("x")}); err != nil || !r.OK {
		t.Fatalf("a write on the new leader: %+v %v", r, err)
	}
}

// reloadable answers n's Raft settings with election and heartbeat
// timeouts of d.
func reloadable(n *Node, d time.Duration) hraft.ReloadableConfig {
	c := n.raft.ReloadableConfig()
	c.HeartbeatTimeout, c.ElectionTimeout = d, d
	return c
}
