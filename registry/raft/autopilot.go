package raft

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/registry"
)

// The leader's half of Reconcile, as Consul's leader reconcile and its
// autopilot: the configuration follows what gossip says of the servers,
// without ever trusting gossip's guesses with the quorum.

type removal struct {
	srv Server
	why string
	// guessed: gossip only suspects it is gone (failed, or unknown); not
	// guessed: it said it left, or its node is back under a new ID or
	// address holder, so the entry is dead for sure.
	guessed bool
}

// leaderView is what one reconcile pass of the leader works from.
type leaderView struct {
	self        Peer
	peers       []Peer            // the other servers, as gossip sees them
	cfg         []Server          // the Raft configuration
	names       map[string]string // Raft ID to node name, as last seen
	byID        map[string]Peer
	aliveByName map[string]Peer
	inCfg       map[string]Server
	voters      int
}

// reconcileLeader makes the configuration follow gossip (Consul's leader
// reconcile and autopilot's dead-server cleanup): dead servers go, within
// the quorum rule, then alive ones come in or move to their new address.
// It answers when to look again (0: at the next change).
func (n *Node) reconcileLeader(ctx context.Context, self Peer, servers []Peer, now time.Time) time.Duration {
	cfg, err := n.Configuration()
	if err != nil {
		n.log.Warn("raft: reconcile", "err", err)
		return retryPause
	}
	v := n.leaderView(self, servers, cfg)
	remove, again := n.deadServers(v, now)
	remove = n.stillAnswers(ctx, remove) // moved.go
	remove = n.keepQuorum(remove, v.voters)
	removed, retry := n.removeServers(remove, v.names)
	again = minPositive(again, retry)
	again = minPositive(again, n.addServers(ctx, v, removed))
	n.pollIndexes(ctx, self, v.byID)
	n.pruneNames(v.byID)
	return again
}

func (n *Node) leaderView(self Peer, servers []Peer, cfg []Server) *leaderView {
	c := &n.group
	c.mu.Lock()
	names := maps.Clone(c.names)
	c.mu.Unlock()
	v := &leaderView{self: self, peers: servers[1:], cfg: cfg, names: names,
		byID: map[string]Peer{}, aliveByName: map[string]Peer{}, inCfg: map[string]Server{}}
	for _, p := range v.peers {
		v.byID[p.ID] = p
		if p.Status == registry.MemberAlive {
			v.aliveByName[p.Name] = p
		}
	}
	for _, s := range cfg {
		v.inCfg[s.ID] = s
		if s.Voter {
			v.voters++
		}
	}
	for id := range c.absent {
		if _, ok := v.inCfg[id]; !ok {
			delete(c.absent, id)
		}
	}
	return v
}

// deadServers lists the servers of the configuration to remove, and when
// the next one's time runs out.
func (n *Node) deadServers(v *leaderView, now time.Time) (remove []removal, again time.Duration) {
	c := &n.group
	cleanup := n.cfg.CleanupDeadServers
	for _, s := range v.cfg {
		if s.ID == v.self.ID {
			continue
		}
		p, known := v.byID[s.ID]
		if known {
			delete(c.absent, s.ID)
		}
		switch {
		case known && p.Status == registry.MemberLeft:
			remove = append(remove, removal{s, "left", false})
		case known && p.Status == registry.MemberFailed:
			if cleanup <= 0 {
				continue
			}
			if wait := n.statusSince(p).Add(cleanup).Sub(now); wait > 0 {
				again = minPositive(again, wait)
				continue
			}
			remove = append(remove, removal{s, "failed for longer than " + cleanup.String(), true})
		case known:
		case v.names[s.ID] != "" && v.aliveByName[v.names[s.ID]].ID != "":
			remove = append(remove, removal{s, "its node is back with ID " + v.aliveByName[v.names[s.ID]].ID, false})
		case conflicting(s, v.peers) != "":
			remove = append(remove, removal{s, "its address is now " + conflicting(s, v.peers) + "'s", false})
		case cleanup > 0:
			// Unknown to gossip: a failed server it has forgotten, or one
			// this agent has not heard of yet (just started); both wait.
			first, ok := c.absent[s.ID]
			if !ok {
				first = now
				c.absent[s.ID] = now
			}
			if wait := first.Add(cleanup).Sub(now); wait > 0 {
				again = minPositive(again, wait)
				continue
			}
			remove = append(remove, removal{s, "unknown to gossip for longer than " + cleanup.String(), true})
		}
	}
	return remove, again
}

// keepQuorum drops the guessed removals when they are half the voters or
// more. Gossip's failures are guesses: removing that many on a guess could
// hand the group to a minority when the others are only cut off from
// gossip (Consul's autopilot rule). Servers that are gone for sure, and
// non-voters, always may go.
func (n *Node) keepQuorum(remove []removal, voters int) []removal {
	guessed, sure := 0, 0
	var ids []string
	for _, r := range remove {
		switch {
		case !r.srv.Voter:
		case r.guessed:
			guessed++
			ids = append(ids, r.srv.ID)
		default:
			sure++
		}
	}
	if guessed == 0 || 2*guessed < voters-sure {
		return remove
	}
	c := &n.group
	if w := "quorum:" + strings.Join(ids, ","); c.warned != w {
		c.warned = w
		n.log.Warn("raft: not removing servers: fewer than a quorum of voters would remain", "servers", ids, "voters", voters)
	}
	return slices.DeleteFunc(remove, func(r removal) bool { return r.guessed && r.srv.Voter })
}

// removeServers applies the removals; it answers which went, and a retry
// pause when one did not.
func (n *Node) removeServers(remove []removal, names map[string]string) (removed map[string]bool, again time.Duration) {
	removed = map[string]bool{}
	for _, r := range remove {
		if err := n.RemoveServer(r.srv.ID); err != nil {
			n.log.Warn("raft: removing a server", "id", r.srv.ID, "node", names[r.srv.ID], "err", err)
			again = minPositive(again, retryPause)
			continue
		}
		removed[r.srv.ID] = true
		n.log.Info("raft: removed a server", "id", r.srv.ID, "node", names[r.srv.ID], "why", r.why)
	}
	return removed, again
}

// addServers makes every alive server a voter at its gossip address:
// new ones are added, moved ones change address in place (self too: a
// server restarted on a new port that leads puts its own new address in).
func (n *Node) addServers(ctx context.Context, v *leaderView, removed map[string]bool) (again time.Duration) {
	for _, p := range append([]Peer{v.self}, v.peers...) {
		if p.Status != registry.MemberAlive {
			continue
		}
		s, ok := v.inCfg[p.ID]
		if ok && s.Address == p.Addr && s.Voter {
			continue
		}
		if !ok && slices.ContainsFunc(v.cfg, func(e Server) bool { return e.Address == p.Addr && e.ID != p.ID && !removed[e.ID] }) {
			continue // the old holder of its address has to go first
		}
		// A voter that cannot be reached can stall the group (a group of
		// one that adds it needs both to commit), so first check that its
		// server port answers: Raft comes in on the same port.
		if p.ID != v.self.ID {
			info, err := n.askPeers(ctx, p.Addr)
			if err == nil && info.ID != "" && info.ID != p.ID {
				// Gossip's address is stale: another server, or an old
				// one, answers there (the server moved on and said so).
				err = fmt.Errorf("it answers as %q", info.ID)
			}
			if err != nil {
				if ctx.Err() == nil {
					n.log.Warn("raft: a server's port does not answer as that server, not adding it yet", "node", p.Name, "addr", p.Addr, "err", err)
				}
				again = minPositive(again, retryPause)
				continue
			}
		}
		// On a server already in the configuration AddVoter changes its
		// address (or makes it a voter) in one change.
		if err := n.AddVoter(p.ID, p.Addr); err != nil {
			n.log.Warn("raft: adding a server", "id", p.ID, "node", p.Name, "err", err)
			again = minPositive(again, retryPause)
			continue
		}
		switch {
		case !ok:
			n.log.Info("raft: added a server", "id", p.ID, "node", p.Name, "addr", p.Addr)
		case s.Address != p.Addr:
			n.log.Info("raft: a server's address changed", "id", p.ID, "node", p.Name, "from", s.Address, "to", p.Addr)
		default:
			n.log.Info("raft: made a server a voter", "id", p.ID, "node", p.Name)
		}
	}
	return again
}

// conflicting answers the name of an alive server, other than s, that
// has s's address.
func conflicting(s Server, peers []Peer) string {
	for _, p := range peers {
		if p.Status == registry.MemberAlive && p.ID != s.ID && p.Addr == s.Address {
			return p.Name
		}
	}
	return ""
}

// pollIndexes asks every alive server of the configuration for its last
// log index, for RaftServers.
func (n *Node) pollIndexes(ctx context.Context, self Peer, byID map[string]Peer) {
	cfg, err := n.Configuration()
	if err != nil {
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]uint64{}
	answers := map[string]polled{}
	for _, s := range cfg {
		p, ok := byID[s.ID]
		if s.ID == self.ID || !ok || p.Status != registry.MemberAlive {
			continue
		}
		wg.Go(func() {
			if info, err := n.askPeers(ctx, s.Address); err == nil {
				mu.Lock()
				got[s.ID] = info.LastIndex
				answers[s.ID] = polled{at: time.Now(), term: info.LastTerm}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	n.group.mu.Lock()
	n.group.lastIndex = got
	n.group.polled = answers
	n.group.mu.Unlock()
}

// pruneNames forgets the names of IDs neither in the configuration nor
// known to gossip.
func (n *Node) pruneNames(byID map[string]Peer) {
	cfg, err := n.Configuration()
	if err != nil {
		return
	}
	c := &n.group
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.names {
		_, known := byID[id]
		if !known && id != n.cfg.ID && !slices.ContainsFunc(cfg, func(s Server) bool { return s.ID == id }) {
			delete(c.names, id)
		}
	}
}

// RaftServerInfo is one server as /v1/operator/raft/configuration shows
// it (Consul's field names).
type RaftServerInfo struct {
	ID              string
	Node            string
	Address         string
	Leader          bool
	Voter           bool
	ProtocolVersion string
	// LastIndex is this server's own on itself; the others' as they last
	// answered the leader's poll (0 on a follower, or not answered yet).
	LastIndex uint64
}

// RaftServers answers the servers of the newest configuration with their
// node names from the last Reconcile; nil when Raft is shut down.
func (n *Node) RaftServers() []RaftServerInfo {
	cfg, err := n.Configuration()
	if err != nil {
		return nil
	}
	_, leader := n.Leader()
	c := &n.group
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]RaftServerInfo, 0, len(cfg))
	for _, s := range cfg {
		info := RaftServerInfo{ID: s.ID, Node: c.names[s.ID], Address: s.Address, Leader: s.ID == leader, Voter: s.Voter,
			ProtocolVersion: n.ProtocolVersion(), LastIndex: c.lastIndex[s.ID]}
		if s.ID == n.cfg.ID {
			info.LastIndex = n.raft.LastIndex()
		}
		out = append(out, info)
	}
	return out
}
