// Package api serves pier's Consul-compatible HTTP JSON API: the agent,
// catalog, health and status endpoints with Consul's paths, field names,
// headers and blocking queries, so that the official consul/api client,
// Registrator, consul-template, Prometheus consul_sd and curl work against
// pier unchanged.
//
// It owns the mapping from registry types onto Consul's JSON shapes and the
// HTTP-level rules (methods, body limits, the requests one client may have
// in progress, error codes). It reads the catalog
// only through registry.Snapshot and writes only through the Registry's
// exported methods; it must not reach into another package's internals.
// Handlers are plain net/http because blocking queries need per-request
// cancellation.
//
// With Config.Consensus (servers running registry/raft), the KV store,
// sessions, txn, status, operator raft and autopilot, and snapshots are
// served from the Raft state (consensus.go): the leader serves writes and
// default reads, any server ?stale ones, and every other agent forwards the
// HTTP request as it came; ServerPortHandler is what a server's port serves
// to them. Without it the KV store is gossip's, last writer wins. User
// events (event.go) go through the Cluster when it carries them (Eventer).
//
// ACLs live in registry/acl; this package resolves every request's token
// through it at one gate (acl.go); each route declares, where it is
// registered, the permission it needs (route.go).
package api
