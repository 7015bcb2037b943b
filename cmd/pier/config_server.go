package main

import (
	"fmt"
	"time"

	"github.com/pier-dev/pier/registry/raft"
	"github.com/pier-dev/pier/registry/wan"
)

// serverSettings say whether this agent is one of the servers that agree
// through Raft (Consul's server, bootstrap_expect, bootstrap, ports.server
// and autopilot.cleanup_dead_servers) and how their group forms.
type serverSettings struct {
	On              bool
	BootstrapExpect int // bootstrap once this many servers are seen; 0: join an existing group
	// Port is the server port (Raft and the servers' internal HTTP);
	// 0: any free port, which gossip tells the other agents.
	Port int
	// CleanupDeadServers removes a server that gossip sees as failed for
	// DeadServerTimeout from the voters (never below a quorum), as
	// Consul's autopilot. A server that left is removed either way, as
	// Consul's leader does: it said so itself.
	CleanupDeadServers bool
	DeadServerTimeout  time.Duration

	// The WAN pool, which only servers join (Consul's ports.serf_wan,
	// start_join_wan, retry_join_wan and gossip_wan).
	WANPort      int // 0: any free port
	JoinWAN      []string
	RetryJoinWAN []string
	WANTimings   wan.Timings

	// LogStore is Consul's raft_logstore.backend ("" : what the data dir
	// holds, the WAL for a new one) and WALSegmentSize its
	// wal.segment_size_mb in bytes (0: raft's default, 64 MiB).
	LogStore       string
	WALSegmentSize int
}

func defaultServerSettings() serverSettings {
	return serverSettings{
		Port:               8300, // Consul's ports.server
		CleanupDeadServers: true, // as Consul's autopilot
		// Long enough that a server restarting (or a gossip false alarm
		// under load) keeps its vote; short enough that a dead one stops
		// counting against the quorum within a minute.
		DeadServerTimeout: 30 * time.Second,
		WANPort:           8302, // Consul's ports.serf_wan
	}
}

// serverFile is the config file's part of it.
type serverFile struct {
	Server          *bool
	BootstrapExpect *int
	Bootstrap       *bool
	Autopilot       *struct {
		CleanupDeadServers *bool
		DeadServerTimeout  *time.Duration // pier's own: how long a failed server keeps its vote
	}
	StartJoinWAN []string
	RetryJoinWAN []string
	GossipWAN    *struct {
		GossipNodes    *int
		GossipInterval *time.Duration
		ProbeInterval  *time.Duration
		ProbeTimeout   *time.Duration
		SuspicionMult  *int
		RetransmitMult *int
	}
	RaftLogstore *struct {
		Backend *string
		WAL     *struct{ SegmentSizeMB *int }
	}
}

func (s *serverSettings) merge(f *serverFile, port, wanPort *int) error {
	fileSets(&s.On, f.Server)
	fileSets(&s.WANPort, wanPort)
	s.JoinWAN = append(s.JoinWAN, f.StartJoinWAN...)
	s.RetryJoinWAN = append(s.RetryJoinWAN, f.RetryJoinWAN...)
	if g := f.GossipWAN; g != nil {
		t := &s.WANTimings
		fileSets(&t.GossipNodes, g.GossipNodes)
		fileSets(&t.GossipInterval, g.GossipInterval)
		fileSets(&t.ProbeInterval, g.ProbeInterval)
		fileSets(&t.ProbeTimeout, g.ProbeTimeout)
		fileSets(&t.SuspicionMult, g.SuspicionMult)
		fileSets(&t.RetransmitMult, g.RetransmitMult)
		if t.GossipNodes < 0 || t.GossipInterval < 0 || t.ProbeInterval < 0 || t.ProbeTimeout < 0 || t.SuspicionMult < 0 || t.RetransmitMult < 0 {
			return fmt.Errorf("gossip_wan: no setting may be negative")
		}
	}
	fileSets(&s.BootstrapExpect, f.BootstrapExpect)
	if f.Bootstrap != nil && *f.Bootstrap {
		if f.BootstrapExpect != nil && *f.BootstrapExpect > 0 {
			return fmt.Errorf("bootstrap and bootstrap_expect cannot both be set: bootstrap is bootstrap_expect 1")
		}
		s.BootstrapExpect = 1
	}
	fileSets(&s.Port, port)
	if a := f.Autopilot; a != nil {
		fileSets(&s.CleanupDeadServers, a.CleanupDeadServers)
		if a.DeadServerTimeout != nil && *a.DeadServerTimeout <= 0 {
			return fmt.Errorf("autopilot.dead_server_timeout: want a positive duration such as 30s")
		}
		fileSets(&s.DeadServerTimeout, a.DeadServerTimeout)
	}
	if l := f.RaftLogstore; l != nil {
		if l.Backend != nil {
			if err := raft.ParseLogStore(*l.Backend); err != nil {
				return fmt.Errorf("raft_logstore.backend: %w", err)
			}
			s.LogStore = *l.Backend
		}
		if l.WAL != nil && l.WAL.SegmentSizeMB != nil {
			mb := *l.WAL.SegmentSizeMB
			if mb < raft.MinWALSegmentSize>>20 || mb > raft.MaxWALSegmentSize>>20 {
				return fmt.Errorf("raft_logstore.wal.segment_size_mb %d: want 1 to 1024", mb)
			}
			s.WALSegmentSize = mb << 20
		}
	}
	return nil
}

// resolveServer applies the flags and -dev: a development agent is a
// server of one, on any free server port unless one is given.
func (c *agentConfig) resolveServer(f *agentFlags, set map[string]bool) error {
	s := &c.Server
	if c.Dev {
		s.On, s.BootstrapExpect = true, 1
		if !set["server-port"] {
			s.Port = 0
		}
		if !set["serf-wan-port"] {
			s.WANPort = 0
		}
	}
	flagWins(set, "server", &s.On, f.c.Server.On)
	flagWins(set, "bootstrap-expect", &s.BootstrapExpect, f.c.Server.BootstrapExpect)
	if set["bootstrap"] && f.bootstrap {
		if set["bootstrap-expect"] {
			return usageError{"-bootstrap and -bootstrap-expect cannot both be set: -bootstrap is -bootstrap-expect 1"}
		}
		s.BootstrapExpect = 1
	}
	flagWins(set, "server-port", &s.Port, f.c.Server.Port)
	flagWins(set, "serf-wan-port", &s.WANPort, f.c.Server.WANPort)
	s.JoinWAN = append(s.JoinWAN, f.joinWAN...)
	s.RetryJoinWAN = append(s.RetryJoinWAN, f.retryJoinWAN...)
	switch {
	case s.BootstrapExpect < 0:
		return usageError{fmt.Sprintf("-bootstrap-expect %d: must not be negative", s.BootstrapExpect)}
	case s.BootstrapExpect > 0 && !s.On:
		return usageError{"-bootstrap-expect needs -server: only servers vote"}
	case s.Port < 0 || s.Port > 65535:
		return usageError{fmt.Sprintf("-server-port %d: out of range (0-65535)", s.Port)}
	case s.WANPort < 0 || s.WANPort > 65535:
		return usageError{fmt.Sprintf("-serf-wan-port %d: out of range (0-65535)", s.WANPort)}
	case !s.On && len(s.JoinWAN)+len(s.RetryJoinWAN) > 0:
		return usageError{"-join-wan and -retry-join-wan need -server: only servers join the WAN pool"}
	}
	if s.On && s.BootstrapExpect > 1 && s.BootstrapExpect%2 == 0 {
		c.Warnings = append(c.Warnings, fmt.Sprintf("bootstrap_expect %d is even: an even number of servers tolerates no more failures than one fewer; use 3 or 5", s.BootstrapExpect))
	}
	return nil
}
