package api

import (
	"bytes"
	"cmp"
	"io"
	"net/http"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
)

// The ACL configuration, rules and store live in registry/acl; these
// names keep the API's Config (and its users) as they were.
type (
	ACLConfig  = acl.Config
	ACLToken   = acl.Token
	ACLRules   = acl.Rules
	Authorizer = acl.Authorizer
	Policy     = acl.Policy
)

// NewAuthorizer validates cfg; nil with no error when ACLs are off.
func NewAuthorizer(cfg ACLConfig) (*Authorizer, error) { return acl.New(cfg) }

// ParseRules reads Consul's rule language (acl.ParseRules).
func ParseRules(src string) (ACLRules, error) { return acl.ParseRules(src) }

// aclRoutes mounts the endpoints of registry/acl, which serve its store;
// they answer 401 when ACLs are off. Their writes of the cluster's objects
// run on the Raft leader with Consensus (acl_raft.go).
func (s *Server) aclRoutes() {
	e := acl.NewEndpoints(s.acl, s.self(), s.cfg.MaxBodySize, s.log)
	e.Routes(s.route, s.aclAgreedRoute)
	s.raftRoute("GET /v1/acl/replication", s.aclReplicationStatus, acl.Anyone) // acl_replication.go
}

// authorize is the one gate every request passes when ACLs are on: it
// resolves the token, asks the route's permission (allowed, route.go) and,
// when allowed, leaves the policy in the request context for the list
// filters. False means a 403 was sent and nothing was done.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	var p *Policy
	if r.Header.Get(acl.FromSecondaryHeader) != "" {
		p = s.acl.ResolveLocal(acl.RequestToken(r)) // acl_replication.go
	} else {
		p = s.acl.Resolve(acl.RequestToken(r))
	}
	if p == nil {
		httpError(w, http.StatusForbidden, "ACL not found")
		return r, false
	}
	r = acl.WithPolicy(r, p)
	if !s.allowed(p, r) {
		acl.Denied(w)
		return r, false
	}
	return r, true
}

// requestToken is the token r acts with: its own, else the agent's
// default token (Consul's agents resolve a missing token so, and send
// that one on when they forward).
func (s *Server) requestToken(r *http.Request) string {
	return cmp.Or(acl.RequestToken(r), s.acl.AgentSecret("default"))
}

// serviceName answers the name of a local service; an unknown ID answers
// "\x00", a name no rule but "" matches, so a token needs rights on every
// service to learn that an ID does not exist.
func (s *Server) serviceName(id string) string {
	if e, ok := s.reg.Snapshot().NodeService(s.self(), id); ok {
		return e.Name
	}
	return "\x00"
}

func (s *Server) checkWrite(p *Policy, id string) bool {
	for _, c := range s.reg.Snapshot().AllNodeChecks(s.self()) {
		if c.CheckID == id {
			if c.ServiceID != "" {
				return p.ServiceWrite(c.ServiceName)
			}
			return p.NodeWrite(s.self())
		}
	}
	return p.NodeWrite(s.self()) && p.ServiceWrite("\x00")
}

// peekBody reads the body (up to limit), then puts it back for the handler.
func peekBody(r *http.Request, limit int64) ([]byte, bool) {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, err == nil
}

// mayRegisterService decodes the body as the handler does (so that no
// spelling of a key reads one name here and another there) and needs write
// on the name registered and, as Consul, on the service it replaces. A body
// that does not decode needs write on "\x00": only a token that may write
// every name lets the handler report the error.
func (s *Server) mayRegisterService(p *Policy, r *http.Request, _ string) bool {
	b, ok := peekBody(r, s.cfg.MaxBodySize)
	if !ok {
		return false
	}
	def, err := registry.DecodeService(b, false)
	if err != nil {
		return p.ServiceWrite("\x00")
	}
	id := def.ID
	if id == "" {
		id = def.Name
	}
	if e, ok := s.reg.Snapshot().NodeService(s.self(), id); ok && !p.ServiceWrite(e.Name) {
		return false
	}
	return p.ServiceWrite(def.Name)
}

// mayRegisterCheck is mayRegisterService for a check: write on the service
// it is for (the node for a node check) and on the check it replaces.
func (s *Server) mayRegisterCheck(p *Policy, r *http.Request, _ string) bool {
	b, ok := peekBody(r, s.cfg.MaxBodySize)
	if !ok {
		return false
	}
	def, err := registry.DecodeCheck(b, false)
	if err != nil {
		return p.NodeWrite(s.self()) && p.ServiceWrite("\x00")
	}
	id := cmp.Or(def.CheckID, def.ID, def.Name)
	for _, c := range s.reg.Snapshot().AllNodeChecks(s.self()) {
		if c.CheckID == id && !s.checkWrite(p, id) {
			return false
		}
	}
	if def.ServiceID == "" {
		return p.NodeWrite(s.self())
	}
	return p.ServiceWrite(s.serviceName(def.ServiceID))
}
