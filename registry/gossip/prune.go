package gossip

import (
	"fmt"

	"github.com/pier-dev/pier/registry"
)

// Prune removes a node from the member list, as Consul's force-leave with
// -prune: at once if it has failed (forced out first, everywhere, as
// ForceLeave does) or left, and for an alive node once it leaves or fails.
// Only this agent's list is pruned; the others drop a node that left after
// LeftRetention.
func (g *Gossip) Prune(node string) error {
	if node == g.reg.NodeName() {
		return nil // an alive node refutes its own removal, as in Consul
	}
	g.mu.Lock()
	m, ok := g.members[node]
	if !ok {
		g.mu.Unlock()
		return fmt.Errorf("gossip: unknown node %q: %w", node, registry.ErrNotFound)
	}
	st := m.Status
	if st == registry.MemberAlive {
		if g.prune == nil {
			g.prune = map[string]bool{}
		}
		g.prune[node] = true
		g.mu.Unlock()
		return nil
	}
	g.mu.Unlock()
	if st == registry.MemberFailed {
		if err := g.ForceLeave(node); err != nil {
			return err
		}
	}
	g.mu.Lock()
	delete(g.members, node)
	delete(g.prune, node)
	g.mu.Unlock()
	g.log.Info("member pruned", "node", node)
	return nil
}

// pruneGone reports whether node, no longer alive, was waiting to be
// pruned, and removes it from the member list if so.
func (g *Gossip) pruneGone(node string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.prune[node] {
		return false
	}
	delete(g.prune, node)
	delete(g.members, node)
	return true
}
