package api

import (
	"net/http"

	"github.com/pier-dev/pier/registry/acl"
)

// Consul endpoints pier does not serve answer with a line that says so,
// not the router's bare "404 page not found", so that a user of a Consul
// tool learns at once that the tool reached pier and why it got nothing.

// connectPrefixes are Consul Connect's (the service mesh), which pier
// leaves out on purpose: it answers as a Consul agent with Connect
// disabled does, a 500 with Consul's message.
var connectPrefixes = []string{
	"/v1/agent/connect/", "/v1/connect/", "/v1/config/", "/v1/config",
	"/v1/discovery-chain/", "/v1/peering/", "/v1/peerings", "/v1/exported-services", "/v1/imported-services",
}

// missingPrefixes are Consul endpoints pier does not serve yet; they need
// servers that agree (sessions, txn, external services, snapshots, Raft)
// (prepared queries too); events need the gossip layer
// (event.go).
var missingPrefixes = []string{
	"/v1/session/", "/v1/txn", "/v1/catalog/register", "/v1/catalog/deregister",
	"/v1/snapshot", "/v1/operator/raft/", "/v1/operator/autopilot/", "/v1/operator/usage",
	"/v1/event/", "/v1/query", "/v1/query/",
}

// raftServed are the missing prefixes that Consensus serves.
var raftServed = map[string]bool{
	"/v1/session/": true, "/v1/txn": true, "/v1/snapshot": true, "/v1/operator/raft/": true,
	"/v1/catalog/register": true, "/v1/catalog/deregister": true, "/v1/operator/autopilot/": true,
	"/v1/query": true, "/v1/query/": true,
}

func (s *Server) unsupportedRoutes() {
	for _, p := range connectPrefixes {
		s.route(p, func(w http.ResponseWriter, r *http.Request) {
			httpError(w, http.StatusInternalServerError,
				"Connect must be enabled in order to use this endpoint: pier does not support Consul Connect (the service mesh), %s", r.URL.Path)
		}, acl.Anyone)
	}
	for _, p := range missingPrefixes {
		if s.cfg.Consensus != nil && raftServed[p] {
			continue
		}
		if p == "/v1/event/" && s.eventer() != nil {
			continue
		}
		s.route(p, func(w http.ResponseWriter, r *http.Request) {
			httpError(w, http.StatusNotFound, "pier does not serve %s yet (see its README for the Consul endpoints it serves)", r.URL.Path)
		}, acl.Anyone)
	}
}
