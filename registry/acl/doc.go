// Package acl owns pier's access control lists, as Consul's: the rule
// language (ParseRules, Rules) and the compiled Policy that answers "may
// this token read or write that service, key, node, agent...", the tokens
// of the configuration's acl stanza (Config, New), the tokens, policies and
// roles made through the API, and the endpoints that manage them
// (/v1/acl/*, /v1/agent/token/*, mounted by registry/api through
// Endpoints.Routes).
//
// Objects made through the API are kept in the registry's KV store under
// registry.ReservedKVPrefix + "acl/", one key per object: the KV store is
// already persisted and replicated, so they survive restarts and reach
// every node. Resolve reads them through registry.Snapshot into an
// immutable table behind an atomic.Pointer, rebuilt only when an ACL key
// changed, so the request path neither locks nor allocates.
//
// It must not decide what an HTTP route needs (the routes declare that
// where they are registered, in registry/api, with a Perm), touch the KV
// store outside its own prefix, or know about gossip: replication is the
// registry's.
package acl
