package raft

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Session TTLs are the leader's business, as in Consul: the log holds no
// clock, so the leader keeps a timer per session with a TTL and, when one
// runs out, proposes the session's destruction. A session is invalidated
// only after twice its TTL (Consul's grace for clock skew and slow
// renewals); a new leader starts every timer afresh, so a failover can only
// lengthen a session's life, never cut it short.

// TTL bounds, as Consul's.
const (
	MinSessionTTL = 10 * time.Second
	MaxSessionTTL = 24 * time.Hour
	ttlMultiplier = 2
)

// ErrSessionNotFound answers a renew of a session that does not exist.
var ErrSessionNotFound = errors.New("session not found")

// ParseTTL checks a session's TTL as Consul does: empty or 0 means none.
func ParseTTL(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("Session TTL '%s' invalid: %v", s, err)
	}
	if d != 0 && (d < MinSessionTTL || d > MaxSessionTTL) {
		return 0, fmt.Errorf("Invalid Session TTL '%s', must be between [%v=%v]", s, MinSessionTTL, MaxSessionTTL)
	}
	return d, nil
}

// sessionTimers are the leader's TTL timers.
type sessionTimers struct {
	mu     sync.Mutex
	timers map[string]*time.Timer
	// expire proposes a session's destruction; it runs on the timer's
	// goroutine.
	expire func(id string)
}

func (st *sessionTimers) reset(id string, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.timers == nil {
		return // not leading
	}
	if t, ok := st.timers[id]; ok {
		t.Stop()
	}
	st.timers[id] = time.AfterFunc(ttl*ttlMultiplier, func() { st.expire(id) })
}

func (st *sessionTimers) clear(id string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if t, ok := st.timers[id]; ok {
		t.Stop()
		delete(st.timers, id)
	}
}

// lead arms a timer for every session of s; stop disarms them all.
func (st *sessionTimers) lead(s *State) {
	st.mu.Lock()
	st.timers = map[string]*time.Timer{}
	st.mu.Unlock()
	for _, sess := range s.Sessions() {
		ttl, _ := ParseTTL(sess.TTL)
		st.reset(sess.ID, ttl)
	}
}

func (st *sessionTimers) stop() {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, t := range st.timers {
		t.Stop()
	}
	st.timers = nil
}

// RenewSession restarts a session's TTL; leader only. It answers the
// session, or ErrSessionNotFound.
func (n *Node) RenewSession(id string) (*Session, error) {
	if !n.IsLeader() {
		return nil, n.leaderErr()
	}
	s, ok := n.fsm.State().Session(id)
	if !ok {
		return nil, ErrSessionNotFound
	}
	ttl, _ := ParseTTL(s.TTL)
	n.timers.reset(id, ttl)
	return s, nil
}

// InvalidateSessions destroys every session for which failing is true
// (the agent passes its view of gossip health); leader only. It answers
// how many it destroyed.
func (n *Node) InvalidateSessions(failing func(*Session) bool) (int, error) {
	if !n.IsLeader() {
		return 0, n.leaderErr()
	}
	count := 0
	for _, s := range n.fsm.State().Sessions() {
		if !failing(s) {
			continue
		}
		if _, err := n.DestroySession(s.ID); err != nil {
			return count, err
		}
		count++
	}
	return count, nil
}

func (n *Node) expireSession(id string) {
	if _, err := n.DestroySession(id); err != nil {
		// Leadership went: the next leader arms its own timer.
		n.log.Debug("raft: expiring a session", "id", id, "err", err)
		return
	}
	n.log.Info("raft: session expired", "id", id)
}
