// Package raft owns the state that pier's servers agree on through
// hashicorp/raft: the KV store with Consul's locks (sessions, lock delay,
// LockIndex), sessions (and the keys bound to one, SessionBoundKey, which
// go with it), and atomic transactions (Consul's /v1/txn KV
// verbs), and operator snapshots in Consul's archive layout (ops.go). It
// keeps the Raft log and stable store in the data dir (store.go:
// hashicorp/raft-wal in raft/wal, or bbolt's raft/raft.db for a data dir
// that already has one; fsynced per append) and snapshots beside them, or
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
// # Servers finding each other
//
// A server listens on one port (Consul's ports.server, 8300): ServerPort
// carries Raft and the servers' internal HTTP, told apart by the first
// byte (0x01 is Raft; ForwardByte, 0x02, opens a connection of forwarded
// writes in frames, which registry/api serves with the same handler as
// the internal HTTP). One port is one address to advertise in gossip, one
// firewall rule and one thing to get wrong; the internal HTTP needs no
// address of its own because it is always "the server port of that
// server".
//
// The agent hands Reconcile gossip's view of the servers. A server with
// bootstrap-expect and no Raft state starts a new group once that many
// servers with the same expect are alive, but first asks each of them
// (GET PeersPath on their server port) whether it already has Raft peers:
// the running group would not vote for a late server, but one that
// bootstrapped a group of its own beside a running one would split the
// cluster into two that never merge, so a server that finds an existing
// group waits to be added instead. On the leader, Reconcile adds every
// alive server that is not a voter, removes servers that left at once and
// failed ones after CleanupDeadServers, but never half the voters or more
// on gossip's word that they failed: gossip can be wrong, and a leader
// that believed it would hand the group to a minority.
//
// # Who may use the server port
//
// A Security (portsec.go) says who the port lets in and how its dialers
// (Raft's, the internal HTTP's) connect: mutual TLS with the operator's
// certificates (Consul's tls.internal_rpc), mutual TLS 1.3 with identities
// derived from the gossip keyring (keyid.go), or plain. TLS runs inside the
// first-byte mux (0x04 opens it; inside, the first byte tells Raft from
// HTTP again), so the port stays one.
//
// A server restarted on its data dir at a new address tells the leader
// itself (moved.go): gossip believes a known name at a new address only
// after half a minute or more.
//
// This package must not import registry/api, proxy or lb, and only the
// agent's wiring and the API may import it (DESIGN.md).
package raft
