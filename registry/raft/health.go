package raft

import (
	"time"

	"github.com/pier-dev/pier/registry"
)

// Autopilot's view of the servers' health (consul operator autopilot
// state, /v1/operator/autopilot/health), from what the leader knows: the
// Raft configuration, gossip's status of each server, and each server's
// answer to the leader's poll of every reconcile pass (pollIndexes).

// polled is one server's answer to the leader's last poll.
type polled struct {
	at   time.Time
	term uint64
}

// MaxTrailingLogs is how far behind the leader's last index a server may be
// and count as healthy: Consul autopilot's default, which pier does not let
// be changed.
const MaxTrailingLogs = 250

// ServerHealth is one server as autopilot's health shows it.
type ServerHealth struct {
	RaftServerInfo
	// SerfStatus is gossip's status of its node: alive, failed, left, or
	// none when gossip does not know it.
	SerfStatus string
	// LastContact is how long ago it last answered the leader's poll; 0
	// for the leader itself; -1 when it has not answered the last poll.
	LastContact time.Duration
	LastTerm    uint64
	Healthy     bool
	// StableSince is when gossip last saw its status change, where the
	// agent tells (zero otherwise).
	StableSince time.Time
}

// Health answers every server of the configuration with its health, on
// the leader (a follower knows only itself), whether all are healthy, and
// how many voters could fail with a quorum left (Consul's
// FailureTolerance). A server is healthy when gossip sees it alive and, but
// for the leader itself, it answered the leader's last poll with the
// leader's term and a last index at most MaxTrailingLogs behind.
func (n *Node) Health() (servers []ServerHealth, healthy bool, failureTolerance int) {
	infos := n.RaftServers()
	now := time.Now()
	term := n.raft.CurrentTerm()
	last := n.raft.LastIndex()
	c := &n.group
	c.mu.Lock()
	gossip := map[string]Peer{}
	for _, p := range c.peers {
		if p.ID != "" {
			gossip[p.ID] = p
		}
	}
	answers := c.polled
	c.mu.Unlock()
	healthy = len(infos) > 0
	voters, healthyVoters := 0, 0
	for _, info := range infos {
		h := ServerHealth{RaftServerInfo: info, SerfStatus: "none", LastContact: -1}
		p, known := gossip[info.ID]
		if known {
			h.SerfStatus, h.StableSince = p.Status.String(), p.Since
		}
		if info.ID == n.cfg.ID {
			h.LastContact, h.LastTerm, h.SerfStatus = 0, term, registry.MemberAlive.String()
			h.Healthy = true
		} else if a, ok := answers[info.ID]; ok {
			h.LastContact, h.LastTerm = now.Sub(a.at), a.term
			h.Healthy = known && p.Status == registry.MemberAlive && a.term == term && info.LastIndex+MaxTrailingLogs >= last
		}
		if !h.Healthy {
			healthy = false
		}
		if info.Voter {
			voters++
			if h.Healthy {
				healthyVoters++
			}
		}
		servers = append(servers, h)
	}
	failureTolerance = max(healthyVoters-(voters/2+1), 0)
	return servers, healthy, failureTolerance
}

// CleanupDeadServers answers how long a failed server stays in the
// configuration before the leader removes it; 0: never (Config's).
func (n *Node) CleanupDeadServers() time.Duration { return n.cfg.CleanupDeadServers }
