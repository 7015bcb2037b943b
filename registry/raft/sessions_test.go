package raft

import (
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

func TestParseTTL(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, true}, {"0s", 0, true}, {"10s", 10 * time.Second, true}, {"24h", 24 * time.Hour, true},
		{"9s", 0, false}, {"25h", 0, false}, {"soon", 0, false}, {"-10s", 0, false},
	} {
		got, err := ParseTTL(c.in)
		if got != c.want || (err == nil) != c.ok {
			t.Errorf("ParseTTL(%q) = %v, %v", c.in, got, err)
		}
	}
}

func singleServer(t *testing.T) *testServer {
	t.Helper()
	s := startServer(t, Config{ID: "solo", Bind: "127.0.0.1:0"})
	if err := s.n.Bootstrap([]Server{{ID: "solo", Address: s.n.Addr(), Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "leading", s.n.IsLeader)
	return s
}

// A session whose TTL runs out (twice over) is destroyed by the leader and
// its lock released; renewing keeps it alive.
func TestSessionTTL(t *testing.T) {
	n := singleServer(t).n
	if _, err := n.CreateSession(Session{ID: "s1", Node: "n1", TTL: "10s"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.CreateSession(Session{ID: "bad", TTL: "5s"}); err == nil {
		t.Error("a 5 s TTL was accepted")
	}
	if r, err := n.KV(KVOp{Verb: KVLock, Key: "leader", Session: "s1"}); err != nil || !r.OK {
		t.Fatalf("acquire: %+v %v", r, err)
	}
	// Shorten the timer (the real minimum is 10 s): it fires after twice
	// the TTL, never before.
	const ttl = 100 * time.Millisecond
	n.timers.reset("s1", ttl)
	for range 3 { // renewals push the deadline out
		time.Sleep(ttl)
		if _, err := n.RenewSession("s1"); err != nil {
			t.Fatalf("renew: %v", err)
		}
		n.timers.reset("s1", ttl) // RenewSession re-armed the real 10 s TTL
	}
	if _, ok := n.State().Session("s1"); !ok {
		t.Fatal("a renewed session expired")
	}
	renewed := time.Now()
	eventually.True(t, 10*time.Second, "the session expires", func() bool { _, ok := n.State().Session("s1"); return !ok })
	if el := time.Since(renewed); el < ttlMultiplier*ttl {
		t.Errorf("expired %v after the last renewal, before twice the TTL", el)
	}
	if e, _ := n.State().KV("leader"); e == nil || e.Session != "" {
		t.Errorf("the expired session's lock: %+v", e)
	}
	if _, err := n.RenewSession("s1"); err != ErrSessionNotFound {
		t.Errorf("renew after expiry: %v", err)
	}
}

func TestInvalidateSessions(t *testing.T) {
	n := singleServer(t).n
	n.CreateSession(Session{ID: "a", Node: "n1"})
	n.CreateSession(Session{ID: "b", Node: "n2"})
	got, err := n.InvalidateSessions(func(s *Session) bool { return s.Node == "n2" })
	if err != nil || got != 1 {
		t.Fatalf("InvalidateSessions: %d %v", got, err)
	}
	if _, ok := n.State().Session("b"); ok {
		t.Error("b survived")
	}
	if _, ok := n.State().Session("a"); !ok {
		t.Error("a was destroyed")
	}
}
