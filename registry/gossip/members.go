package gossip

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
)

// reconnect tries failed nodes again, as Serf does: memberlist stops talking
// to a dead node after a while, so a healed partition would otherwise stay
// split. One attempt at a time; a dead address costs a TCP timeout.
func (g *Gossip) reconnect(ctx context.Context, wg *sync.WaitGroup) {
	g.mu.Lock()
	if g.reconnecting {
		g.mu.Unlock()
		return
	}
	var addrs []string
	for _, m := range g.members {
		if m.Status == registry.MemberFailed {
			addrs = append(addrs, net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)))
		}
	}
	g.reconnecting = len(addrs) > 0
	g.mu.Unlock()
	if len(addrs) == 0 {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() {
			g.mu.Lock()
			g.reconnecting = false
			g.mu.Unlock()
		}()
		for _, a := range addrs {
			if ctx.Err() != nil {
				return
			}
			if _, err := g.ml.Join([]string{a}); err == nil {
				g.log.Info("reconnected to a failed node", "addr", a)
			}
		}
	}()
}

func (g *Gossip) retryJoin(ctx context.Context) {
	wait := time.Second
	for attempt := 1; ; attempt++ {
		n, err := g.ml.Join(g.cfg.RetryJoin)
		if n > 0 {
			g.log.Info("joined the cluster", "addrs", g.cfg.RetryJoin, "attempt", attempt)
			return
		}
		g.log.Warn("retry-join failed; will try again", "addrs", g.cfg.RetryJoin, "attempt", attempt, "in", wait, "err", oneLine(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, g.cfg.RetryMax)
	}
}

func (g *Gossip) member(it item) {
	n := it.node
	if n.Name == g.reg.NodeName() {
		return
	}
	st := registry.MemberAlive
	g.mu.Lock()
	_, intent := g.leftIntent[n.Name]
	if it.kind != itemLeave {
		delete(g.leftIntent, n.Name) // back again
	}
	g.mu.Unlock()
	if it.kind == itemLeave {
		st = registry.MemberFailed
		if intent {
			st = registry.MemberLeft
		}
		if g.pruneGone(n.Name) { // forced out with prune while alive
			g.log.Info("member pruned", "node", n.Name)
			g.reg.SetMemberStatus(n.Name, "", registry.MemberLeft)
			return
		}
	}
	var tags map[string]string
	if len(n.Meta) > 0 {
		json.Unmarshal(n.Meta, &tags)
	}
	addr := n.Addr.String()
	g.mu.Lock()
	m, ok := g.members[n.Name]
	if ok && it.kind == itemLeave && m.Status == registry.MemberLeft {
		// Forced out (or said it was leaving) before memberlist gave up
		// on it: it stays left, not failed.
		g.mu.Unlock()
		return
	}
	if !ok {
		m = &memberState{}
		g.members[n.Name] = m
	}
	changed := m.Status != st
	m.Member = registry.Member{Name: n.Name, Addr: addr, Port: int(n.Port), Tags: tags, Status: st}
	if changed {
		m.since = time.Now()
	}
	g.mu.Unlock()
	if changed {
		g.log.Info("member "+st.String(), "node", n.Name, "addr", addr)
	}
	g.reg.SetMemberStatus(n.Name, addr, st)
}

// leftIntentFrom records that a node said it is leaving; if memberlist
// already reported it gone, it is now known to have left, not failed.
func (g *Gossip) leftIntentFrom(name string) {
	if name == g.reg.NodeName() {
		return
	}
	g.mu.Lock()
	g.leftIntent[name] = time.Now()
	m, ok := g.members[name]
	failed := ok && m.Status == registry.MemberFailed
	if failed {
		m.Status, m.since = registry.MemberLeft, time.Now()
	}
	g.mu.Unlock()
	if failed {
		g.log.Info("member left", "node", name)
		g.reg.SetMemberStatus(name, "", registry.MemberLeft)
	}
}

// reap forgets failed nodes after ReconnectTimeout and stops listing nodes
// that left after LeftRetention.
func (g *Gossip) reap(now time.Time) {
	g.mu.Lock()
	var reaped []string
	for name, m := range g.members {
		switch {
		case m.Status == registry.MemberFailed && now.Sub(m.since) > g.cfg.ReconnectTimeout:
			reaped = append(reaped, name)
			delete(g.members, name)
		case m.Status == registry.MemberLeft && now.Sub(m.since) > g.cfg.LeftRetention:
			delete(g.members, name)
		}
	}
	for name, at := range g.leftIntent {
		if now.Sub(at) > g.cfg.LeftRetention {
			delete(g.leftIntent, name)
		}
	}
	g.mu.Unlock()
	for _, name := range reaped {
		g.log.Info("reaping failed node", "node", name, "after", g.cfg.ReconnectTimeout)
		g.reg.ForgetNode(name)
	}
	g.reg.CollectTombstones(g.cfg.TombstoneTTL)
}

// forget marks a member as left: its services go at once. A member that
// still answers a ping is alive and stays (nil): as with Consul, a live
// node refutes a force-leave. Any other member that is not this node goes,
// whatever memberlist says of it.
func (g *Gossip) forget(name string) (bool, error) {
	if name == g.reg.NodeName() {
		return false, fmt.Errorf("gossip: %q is this node; use leave: %w", name, registry.ErrProtected)
	}
	g.mu.Lock()
	m, ok := g.members[name]
	var cur registry.Member
	if ok {
		cur = m.Member
	}
	g.mu.Unlock()
	switch {
	case !ok:
		return false, fmt.Errorf("gossip: unknown node %q: %w", name, registry.ErrNotFound)
	case cur.Status == registry.MemberAlive && g.reachable(name, cur):
		return false, nil
	}
	g.mu.Lock()
	if m, ok = g.members[name]; ok {
		m.Status, m.since = registry.MemberLeft, time.Now()
	}
	g.mu.Unlock()
	g.log.Info("member forced out", "node", name, "was", cur.Status.String())
	g.reg.ForgetNode(name)
	return true, nil
}

// Members lists every node known: alive, failed (until reaped) and left
// (for a while), ordered by name.
func (g *Gossip) Members() []registry.Member {
	return g.listMembers(nil)
}

// MembersTagged lists, as Members does, the nodes whose gossiped tags
// (not dc or id, which are in the node's record) hold value at key. An
// agent looks for the servers so, often, in a cluster of mostly clients.
func (g *Gossip) MembersTagged(key, value string) []registry.Member {
	return g.listMembers(func(m *memberState) bool { return m.Tags[key] == value })
}

func (g *Gossip) listMembers(keep func(*memberState) bool) []registry.Member {
	snap := g.reg.Snapshot()
	g.mu.Lock()
	defer g.mu.Unlock()
	var names []string
	for name, m := range g.members {
		if keep == nil || keep(m) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	out := make([]registry.Member, 0, len(names))
	for _, name := range names {
		m := g.members[name].Member
		if name == g.reg.NodeName() && g.leaving {
			m.Status = registry.MemberLeaving
		}
		// dc and id are in the node's record, not in its memberlist meta.
		if n, ok := snap.Node(name); ok && (m.Tags["dc"] == "" || m.Tags["id"] == "") {
			tags := maps.Clone(m.Tags)
			if tags == nil {
				tags = map[string]string{}
			}
			if tags["dc"] == "" && n.Datacenter != "" {
				tags["dc"] = n.Datacenter
			}
			if tags["id"] == "" && n.ID != "" {
				tags["id"] = n.ID
			}
			m.Tags = tags
		}
		out = append(out, m)
	}
	return out
}

// Join contacts addrs (host or host:port; the default port is 8301) and
// returns how many answered.
func (g *Gossip) Join(addrs []string) (int, error) {
	return g.ml.Join(addrs)
}

// Leave tells the cluster this node is leaving and waits for it to be heard.
// The agent shuts down afterwards.
func (g *Gossip) Leave() error {
	g.mu.Lock()
	if g.leaving {
		g.mu.Unlock()
		return nil
	}
	g.leaving = true
	g.mu.Unlock()
	g.announceLeave()
	return g.ml.Leave(g.cfg.LeaveTimeout)
}

// announceLeave tells every alive member, over TCP, that this node is about
// to leave: memberlist's own dead message does not say whether a node left
// or failed, and only a node that left takes its services with it at once.
func (g *Gossip) announceLeave() {
	msg := append([]byte{msgLeave}, g.reg.NodeName()...)
	// Our own copies of the addresses: the nodes memberlist hands out are
	// its live state, which it keeps writing.
	var to []*memberlist.Node
	g.mu.Lock()
	for name, m := range g.members {
		if name != g.reg.NodeName() && m.Status == registry.MemberAlive {
			to = append(to, &memberlist.Node{Name: name, Addr: net.ParseIP(m.Addr), Port: uint16(m.Port)})
		}
	}
	g.mu.Unlock()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, n := range to {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := g.ml.SendReliable(n, msg); err != nil {
				g.log.Debug("announcing leave", "to", n.Name, "err", err)
			}
		}()
	}
	wg.Wait()
}

// ForceLeave removes a node that is not this one now, here and, by a
// broadcast, on every other node: a failed node instead of after
// ReconnectTimeout, a member that cannot be reached at once. A live node
// that answers stays.
func (g *Gossip) ForceLeave(node string) error {
	if gone, err := g.forget(node); err != nil || !gone {
		return err
	}
	g.queue.QueueBroadcast(&broadcast{name: "force-leave\x00" + node, msg: append([]byte{msgForceLeave}, node...)})
	return nil
}

// NumMembers is the number of alive members, this node included.
func (g *Gossip) NumMembers() int { return g.ml.NumMembers() }
