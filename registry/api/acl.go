package api

import (
	"bytes"
	"cmp"
	"io"
	"net/http"
	"strings"

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
// they answer 401 when ACLs are off.
func (s *Server) aclRoutes() {
	e := acl.NewEndpoints(s.acl, s.self(), s.cfg.MaxBodySize, s.log)
	e.Routes(func(pattern string, h http.HandlerFunc, _ acl.Perm) { s.mux.HandleFunc(pattern, h) })
}

// authorize is the one gate every request passes when ACLs are on: it
// resolves the token, decides what the route needs and, when allowed,
// leaves the policy in the request context for the list filters. False
// means a 403 was sent and nothing was done.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	p := s.acl.Resolve(acl.RequestToken(r))
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

// allowed maps a request onto the permission it needs, as Consul does.
// List reads pass here and are filtered by the handlers.
func (s *Server) allowed(p *Policy, r *http.Request) bool {
	path := r.URL.Path
	if strings.HasPrefix(path, "/debug/") {
		return p.Management() || p.OperatorRead() // Go's profiles, as Consul's
	}
	if !strings.HasPrefix(path, "/v1/") {
		return true // the UI's static files and /metrics, as Consul serves its UI
	}
	if p.Management() {
		return true
	}
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	rest := func(pre string) (string, bool) { return strings.CutPrefix(path, pre) }
	self := s.self()
	if k, ok := rest("/v1/kv/"); ok {
		if read {
			return p.KeyRead(k)
		}
		return p.KeyWrite(k)
	}
	if path == "/v1/operator/keyring" {
		// Consul's keyring rule, or operator for rules without one.
		if read {
			return p.KeyringRead()
		}
		return p.KeyringWrite()
	}
	if strings.HasPrefix(path, "/v1/acl/") {
		switch {
		case path == "/v1/acl/token/self":
			return true // any known token may read itself
		case read:
			return p.ACLRead()
		}
		return p.ACLWrite()
	}
	if read {
		for _, pre := range []string{"/v1/catalog/service/", "/v1/health/service/", "/v1/health/checks/", "/v1/agent/health/service/name/"} {
			if name, ok := rest(pre); ok {
				return p.ServiceRead(name)
			}
		}
		for _, pre := range []string{"/v1/agent/service/", "/v1/agent/health/service/id/"} {
			if id, ok := rest(pre); ok {
				return p.ServiceRead(s.serviceName(id))
			}
		}
		switch path {
		case "/v1/agent/services", "/v1/catalog/services", "/v1/agent/checks",
			"/v1/status/leader", "/v1/status/peers", "/v1/catalog/datacenters":
			return true // filtered, or nothing secret
		case "/v1/agent/self", "/v1/agent/metrics", "/v1/agent/metrics/stream", "/v1/agent/monitor":
			return p.AgentRead(self)
		case "/v1/agent/host":
			return p.OperatorRead()
		case "/v1/agent/version":
			return true // none in Consul either
		}
		if strings.HasPrefix(path, "/v1/health/state/") {
			return true // filtered
		}
		if n, ok := rest("/v1/catalog/node/"); ok {
			return p.NodeRead(n)
		}
		if n, ok := rest("/v1/catalog/node-services/"); ok {
			return p.NodeRead(n)
		}
		if n, ok := rest("/v1/health/node/"); ok {
			return p.NodeRead(n)
		}
		if path == "/v1/agent/members" || path == "/v1/catalog/nodes" {
			return p.NodeRead("")
		}
		return false // anything else (new endpoints) needs management
	}
	switch path {
	case "/v1/agent/service/register":
		return s.mayRegisterService(p, r)
	case "/v1/agent/check/register":
		return s.mayRegisterCheck(p, r)
	case "/v1/agent/maintenance", "/v1/agent/leave":
		return p.NodeWrite(self) && p.AgentWrite(self)
	case "/v1/agent/reload":
		return p.AgentWrite(self)
	}
	for _, pre := range []string{"/v1/agent/service/deregister/", "/v1/agent/service/maintenance/"} {
		if id, ok := rest(pre); ok {
			return p.ServiceWrite(s.serviceName(id))
		}
	}
	for _, pre := range []string{"/v1/agent/check/deregister/", "/v1/agent/check/pass/",
		"/v1/agent/check/warn/", "/v1/agent/check/fail/", "/v1/agent/check/update/"} {
		if id, ok := rest(pre); ok {
			return s.checkWrite(p, id)
		}
	}
	if strings.HasPrefix(path, "/v1/agent/token/") {
		return p.AgentWrite(self) // and what the token grants (agentToken)
	}
	if strings.HasPrefix(path, "/v1/agent/join/") {
		return p.AgentWrite(self)
	}
	if strings.HasPrefix(path, "/v1/agent/force-leave/") {
		return p.OperatorWrite()
	}
	return false
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
func (s *Server) mayRegisterService(p *Policy, r *http.Request) bool {
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
func (s *Server) mayRegisterCheck(p *Policy, r *http.Request) bool {
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
