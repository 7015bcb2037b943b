package raft

import (
	"context"
	"time"

	"github.com/pier-dev/pier/registry"
)

// FollowMembers hands Reconcile gossip's view of the servers until ctx
// ends: at once, whenever the catalog changes (a node joined, failed or
// left) and every interval besides, since a failed server's clock runs
// without any change to wake on. members is the gossip member list, reg the
// registry whose CatalogChanged marks membership changes, dc this server's
// datacenter (servers of others are not peers).
func (n *Node) FollowMembers(ctx context.Context, self Peer, members func() []registry.Member, reg *registry.Registry, dc string, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		changed := reg.Snapshot().CatalogChanged()
		var peers []Peer
		for _, m := range members() {
			if p, ok := PeerFromMember(m, dc); ok && p.ID != self.ID {
				peers = append(peers, p)
			}
		}
		n.Reconcile(self, peers)
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-t.C:
		}
	}
}
