// Package raft owns the state that pier's servers agree on through
// hashicorp/raft: the KV store with Consul's locks (sessions, lock delay,
// LockIndex), sessions, and atomic transactions (Consul's /v1/txn KV
// verbs), and operator snapshots in Consul's archive layout (ops.go). It
// keeps the Raft log and stable store in the data dir
// (raft/raft.db, bbolt, fsynced per append) and snapshots beside them, or
// everything in memory for -dev.
//
// The state machine (FSM) publishes an immutable State after every applied
// entry, as registry publishes its Snapshot: readers never lock, and
// Changed wakes blocking queries. Everything an apply needs is in the log
// entry, so every server computes the same State; what depends on gossip
// (whether a session's node and checks are healthy) is decided by the
// leader before it proposes an entry.
//
// It also holds the external nodes of Consul's /v1/catalog/register
// (catalog.go). The agreed KV store and the external nodes reach every
// agent's registry snapshot (mirror.go): RunMirror on a server, and on a
// client FollowMirror, which long-polls a server's MirrorHandler. Sessions
// stay on the servers. What comes from gossip and what from Raft in the
// snapshot is told in registry/README.md.
//
// This package must not import registry/api, proxy or lb, and only the
// agent's wiring and the API may import it (DESIGN.md).
package raft
