package acl

import "net/http"

// Perm is what one route needs: whether a token with policy p may make
// request r. arg is the request's path after the route's literal prefix
// (the value of its trailing wildcard, as r.URL.Path spells it). Routes
// declare theirs where they are registered (registry/api's route); the
// gate lets management tokens through before it asks.
type Perm func(p *Policy, r *http.Request, arg string) bool

// Anyone lets every known token through: lists the handler filters, or
// answers with nothing secret.
func Anyone(*Policy, *http.Request, string) bool { return true }

// ManagementOnly is for what no rule grants: only management tokens, which
// the gate lets through before asking, may make the request.
func ManagementOnly(*Policy, *http.Request, string) bool { return false }

// AgentRead needs agent:read on node (this agent's).
func AgentRead(node string) Perm {
	return func(p *Policy, _ *http.Request, _ string) bool { return p.AgentRead(node) }
}

// AgentWrite needs agent:write on node (this agent's).
func AgentWrite(node string) Perm {
	return func(p *Policy, _ *http.Request, _ string) bool { return p.AgentWrite(node) }
}
