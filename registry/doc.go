// Package registry owns pier's service catalog and KV store: the model
// (Node, Service, Check, Status), this node's own records and their
// persistence in the data dir, the versioned entries by which every node's
// records and the KV store replicate (Entry, NodeState, Merge, MergeStates:
// the gossip package only carries them), and the cluster view published as
// an immutable Snapshot behind an atomic pointer. In the data dir it keeps
// services/ and checks/ (one file per API registration, fsynced: a damaged
// one stops the agent) and checks/state/ (the last result of each TTL check,
// written on every update without fsync: a damaged one is dropped), each
// made at its first write, not at start.
//
// Every change produces a new Snapshot with a larger Index and closes the
// previous snapshot's Changed channel, which is all that blocking queries,
// DNS and the load balancer need: readers never lock, and a burst of changes
// wakes a consumer once (it then reads the newest snapshot).
//
// The snapshot merges two kinds of state (agreed.go): gossip (every
// agent's own node, services and checks, and the KV keys under
// ReservedKVPrefix) and what the servers agree on through Raft, handed in
// by SetAgreed (external nodes with their services and checks, and every
// other KV key). registry/raft feeds it; this package does not import it.
//
// This package must not import proxy or lb, and it knows nothing of HTTP: the
// Consul-compatible API lives in registry/api and maps these types onto
// Consul's JSON shapes.
package registry
