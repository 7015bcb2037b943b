package api

import (
	"context"
	"log/slog"
	"time"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/raft"
)

// Sessions die with their health, as Consul's: a session whose node left
// the catalog, or one of whose checks is critical or gone, is invalidated
// (its locks released or its keys deleted, by its behaviour). Health is
// gossip state, which the Raft state machine cannot read, so the leader
// judges it from its own registry and proposes the destruction.

// sessionHealthEvery is how often the leader looks without a catalog
// change (a missed wake-up costs at most this).
const sessionHealthEvery = 3 * time.Second

// newLeaderGrace: a server that has just been elected may not yet have
// merged every node's records over gossip, so for this long it acts only
// on checks it sees critical, not on nodes or checks it does not see.
const newLeaderGrace = 10 * time.Second

// RunSessionHealth invalidates failing sessions while node leads: on every
// change of reg's catalog and every few seconds. It returns nil when ctx
// ends. The agent runs it on every server.
func RunSessionHealth(ctx context.Context, node *raft.Node, reg *registry.Registry) error {
	return runSessionHealth(ctx, node, reg, newLeaderGrace, nil)
}

func runSessionHealth(ctx context.Context, node *raft.Node, reg *registry.Registry, grace time.Duration, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tick := time.NewTicker(sessionHealthEvery)
	defer tick.Stop()
	var leadingSince time.Time
	for {
		snap := reg.Snapshot()
		if node.IsLeader() {
			if leadingSince.IsZero() {
				leadingSince = time.Now()
			}
			settled := time.Since(leadingSince) >= grace
			n, err := node.InvalidateSessions(func(s *raft.Session) bool {
				return sessionFailing(snap, s, settled)
			})
			if err != nil {
				log.Debug("api: invalidating sessions", "err", err) // leadership moved: the next leader does it
			} else if n > 0 {
				log.Info("api: sessions invalidated by health", "count", n)
			}
		} else {
			leadingSince = time.Time{}
		}
		// Before grace ends nothing wakes this loop for the missing nodes;
		// the ticker does.
		select {
		case <-ctx.Done():
			return nil
		case <-snap.CatalogChanged():
		case <-tick.C:
		}
	}
}

// sessionFailing says whether s must go: a check of it critical, or, once
// settled, its node or a check missing.
func sessionFailing(snap *registry.Snapshot, s *raft.Session, settled bool) bool {
	if _, ok := snap.Node(s.Node); !ok {
		return settled
	}
	checks := snap.AllNodeChecks(s.Node)
	ids := append([]string(nil), s.NodeChecks...)
	for _, sc := range s.ServiceChecks {
		ids = append(ids, sc.ID)
	}
	for _, id := range ids {
		found := false
		for _, c := range checks {
			if c.CheckID != id {
				continue
			}
			found = true
			if c.Status == registry.StatusCritical || c.Status == registry.StatusMaintenance {
				return true
			}
		}
		if !found && settled {
			return true
		}
	}
	return false
}
