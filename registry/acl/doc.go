// Package acl owns pier's access control lists, as Consul's: the rule
// language (ParseRules, Rules) and the compiled Policy that answers "may
// this token read or write that service, key, node, agent...", the tokens
// of the configuration's acl stanza (Config, New), the tokens, policies and
// roles made through the API, and the endpoints that manage them
// (/v1/acl/*, /v1/agent/token/*, mounted by registry/api through
// Endpoints.Routes).
//
// Objects made through the API are kept in the KV store under
// registry.AgreedReservedPrefix ("_pier/acl/"), one key per object. With
// servers they are the servers' Raft state: registry/api runs every write
// endpoint on the leader (Endpoints.Routes registers those through its
// agreed function) and gives the Authorizer a Writer that applies through
// the leader's node (SetWriter); every agent reads them from its registry
// snapshot, where the servers' mirror puts them. Without servers the
// Writer is the gossip KV store (persisted, replicated, last writer wins).
// PUT /v1/acl/bootstrap makes the first management token once per cluster,
// in one transaction over a marker key (bootstrap.go). Resolve reads the
// objects through registry.Snapshot into an immutable table behind an
// atomic.Pointer, rebuilt only when an ACL key changed, so the request
// path neither locks nor allocates.
//
// Between datacenters, as Consul: the primary (Config.PrimaryDatacenter)
// holds the policies, roles and global tokens; a secondary's leader copies
// them into its own state by blocking queries against the primary
// (RunReplication, replication.go), writes of global objects made in a
// secondary are served by the primary (primary.go), and a token a
// secondary does not have is asked of the primary when it does not
// replicate tokens (remote.go). The way to the primary is a Primary that
// registry/api provides over the WAN.
//
// It must not decide what an HTTP route needs (the routes declare that
// where they are registered, in registry/api, with a Perm), touch the KV
// store outside its own prefix, import registry/api or registry/raft, or
// know about gossip or Raft: replication is the registry's, agreement the
// Writer's.
package acl
