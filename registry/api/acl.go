package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// ACLConfig is Consul's acl stanza, with tokens and their rules defined in
// the configuration (there is no /v1/acl API: tokens change with a restart).
type ACLConfig struct {
	Enabled       bool
	DefaultPolicy string // "allow" or "deny"; "allow" when empty, as Consul
	// InitialManagement may do everything (Consul's tokens.initial_management).
	InitialManagement string
	// Agent is Consul's tokens.agent; pier itself makes no API calls, so it
	// is an agent-write token that may do anything on this node's agent.
	Agent string
	// Default is used for requests without a token (Consul's tokens.default);
	// empty: anonymous requests get DefaultPolicy.
	Default string
	Tokens  []ACLToken // tokens with rules
}

// ACLToken is one token with its rules.
type ACLToken struct {
	Secret      string
	Description string
	Rules       ACLRules
}

// ACLRules are Consul's policy rules, each prefix map from a name prefix to
// "read", "write" or "deny"; the longest matching prefix wins, "" matches
// everything, and write implies read. Operator is one access level.
type ACLRules struct {
	ServicePrefix map[string]string
	KeyPrefix     map[string]string
	NodePrefix    map[string]string
	AgentPrefix   map[string]string
	Operator      string
}

// access is one level of a rule.
type access int

const (
	accessNone access = iota // no rule: the default policy applies
	accessDeny
	accessRead
	accessWrite
)

func parseAccess(s string) (access, error) {
	switch s {
	case "deny":
		return accessDeny, nil
	case "read":
		return accessRead, nil
	case "write":
		return accessWrite, nil
	}
	return accessNone, fmt.Errorf("%q is not one of read, write, deny", s)
}

// prefixRules is one resource's prefix table.
type prefixRules map[string]access

func parsePrefixes(kind string, m map[string]string) (prefixRules, error) {
	out := prefixRules{}
	for p, v := range m {
		a, err := parseAccess(v)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", kind, p, err)
		}
		out[p] = a
	}
	return out, nil
}

// lookup answers the rule of the longest prefix of name.
func (p prefixRules) lookup(name string) access {
	best, got := -1, accessNone
	for pre, a := range p {
		if len(pre) > best && strings.HasPrefix(name, pre) {
			best, got = len(pre), a
		}
	}
	return got
}

// Policy is what one token may do. The zero Policy with allow=false denies
// everything.
type Policy struct {
	management bool
	allow      bool // the default policy, for resources without a rule
	service    prefixRules
	key        prefixRules
	node       prefixRules
	agent      prefixRules
	operator   access
}

func (p *Policy) can(rules prefixRules, name string, write bool) bool {
	if p.management {
		return true
	}
	return p.level(rules.lookup(name), write)
}

func (p *Policy) level(a access, write bool) bool {
	switch a {
	case accessWrite:
		return true
	case accessRead:
		return !write
	case accessDeny:
		return false
	}
	return p.allow
}

// ServiceRead and the other checks report whether the token may read or
// write the named resource.
func (p *Policy) ServiceRead(name string) bool  { return p.can(p.service, name, false) }
func (p *Policy) ServiceWrite(name string) bool { return p.can(p.service, name, true) }
func (p *Policy) KeyRead(key string) bool       { return p.can(p.key, key, false) }
func (p *Policy) KeyWrite(key string) bool      { return p.can(p.key, key, true) }
func (p *Policy) NodeRead(name string) bool     { return p.can(p.node, name, false) }
func (p *Policy) NodeWrite(name string) bool    { return p.can(p.node, name, true) }
func (p *Policy) AgentRead(name string) bool    { return p.can(p.agent, name, false) }
func (p *Policy) AgentWrite(name string) bool   { return p.can(p.agent, name, true) }
func (p *Policy) OperatorRead() bool            { return p.management || p.level(p.operator, false) }
func (p *Policy) OperatorWrite() bool           { return p.management || p.level(p.operator, true) }

// Management reports whether the token may do everything.
func (p *Policy) Management() bool { return p.management }

// Authorizer resolves tokens to policies. It is immutable after
// NewAuthorizer.
type Authorizer struct {
	secrets   [][sha256.Size]byte // hashed, so that compares do not depend on length
	policies  []*Policy
	anonymous *Policy
}

// NewAuthorizer validates cfg; nil with no error when ACLs are off.
func NewAuthorizer(cfg ACLConfig) (*Authorizer, error) {
	if !cfg.Enabled {
		return nil, nil
	}
	allow := true
	switch cfg.DefaultPolicy {
	case "", "allow":
	case "deny":
		allow = false
	default:
		return nil, fmt.Errorf("acl: default_policy %q is not allow or deny", cfg.DefaultPolicy)
	}
	a := &Authorizer{}
	seen := map[string]bool{}
	add := func(secret string, p *Policy) error {
		if secret == "" {
			return nil
		}
		if seen[secret] {
			// Never print a secret, even in a config error.
			return errors.New("acl: a token secret is defined twice")
		}
		seen[secret] = true
		a.secrets = append(a.secrets, sha256.Sum256([]byte(secret)))
		a.policies = append(a.policies, p)
		return nil
	}
	if err := add(cfg.InitialManagement, &Policy{management: true}); err != nil {
		return nil, err
	}
	if err := add(cfg.Agent, &Policy{allow: allow, agent: prefixRules{"": accessWrite}, node: prefixRules{"": accessWrite}}); err != nil {
		return nil, err
	}
	var defPolicy *Policy
	for i, t := range cfg.Tokens {
		if t.Secret == "" {
			return nil, fmt.Errorf("acl: tokens_list[%d] (%s): secret is empty", i, t.Description)
		}
		p, err := newPolicy(t.Rules, allow)
		if err != nil {
			return nil, fmt.Errorf("acl: tokens_list[%d] (%s): %w", i, t.Description, err)
		}
		if err := add(t.Secret, p); err != nil {
			return nil, err
		}
	}
	a.anonymous = &Policy{allow: allow}
	if cfg.Default != "" {
		if defPolicy = a.Resolve(cfg.Default); defPolicy == nil {
			return nil, errors.New("acl: tokens.default is not a defined token")
		}
		a.anonymous = defPolicy
	}
	return a, nil
}

func newPolicy(r ACLRules, allow bool) (*Policy, error) {
	p := &Policy{allow: allow}
	var err error
	if p.service, err = parsePrefixes("service_prefix", r.ServicePrefix); err != nil {
		return nil, err
	}
	if p.key, err = parsePrefixes("key_prefix", r.KeyPrefix); err != nil {
		return nil, err
	}
	if p.node, err = parsePrefixes("node_prefix", r.NodePrefix); err != nil {
		return nil, err
	}
	if p.agent, err = parsePrefixes("agent_prefix", r.AgentPrefix); err != nil {
		return nil, err
	}
	if r.Operator != "" {
		if p.operator, err = parseAccess(r.Operator); err != nil {
			return nil, fmt.Errorf("operator: %w", err)
		}
	}
	return p, nil
}

// Resolve answers the policy of secret: the anonymous one for "", nil for
// an unknown token. Every secret's hash is compared, in constant time, so
// the answer's timing does not tell how much of a guess, or its length, was
// right.
func (a *Authorizer) Resolve(secret string) *Policy {
	if secret == "" {
		return a.anonymous
	}
	var found *Policy
	h := sha256.Sum256([]byte(secret))
	for i, k := range a.secrets {
		if subtle.ConstantTimeCompare(k[:], h[:]) == 1 {
			found = a.policies[i]
		}
	}
	return found
}

// requestToken reads the token the way Consul's clients send it.
func requestToken(r *http.Request) string {
	if t := r.Header.Get("X-Consul-Token"); t != "" {
		return t
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return r.URL.Query().Get("token")
}

type policyKey struct{}

// policyOf answers the request's policy; nil when ACLs are off.
func policyOf(r *http.Request) *Policy {
	p, _ := r.Context().Value(policyKey{}).(*Policy)
	return p
}

// mayReadService is the filter for list answers: true when ACLs are off.
func mayReadService(r *http.Request, name string) bool {
	p := policyOf(r)
	return p == nil || p.ServiceRead(name)
}

func denied(w http.ResponseWriter) {
	httpError(w, http.StatusForbidden, "Permission denied")
}

// authorize is the one gate every request passes when ACLs are on: it
// resolves the token, decides what the route needs and, when allowed,
// leaves the policy in the request context for the list filters. False
// means a 403 was sent and nothing was done.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	p := s.acl.Resolve(requestToken(r))
	if p == nil {
		httpError(w, http.StatusForbidden, "ACL not found")
		return r, false
	}
	r = r.WithContext(context.WithValue(r.Context(), policyKey{}, p))
	if !s.allowed(p, r) {
		denied(w)
		return r, false
	}
	return r, true
}

// allowed maps a request onto the permission it needs, as Consul does.
// List reads pass here and are filtered by the handlers.
func (s *Server) allowed(p *Policy, r *http.Request) bool {
	path := r.URL.Path
	if !strings.HasPrefix(path, "/v1/") {
		return true // the UI's static files and /metrics, as Consul serves its UI
	}
	if p.management {
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
		// Consul's keyring rule; pier folds it into operator.
		if read {
			return p.OperatorRead()
		}
		return p.OperatorWrite()
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
		case "/v1/agent/self":
			return p.AgentRead(self)
		}
		if strings.HasPrefix(path, "/v1/health/state/") {
			return true // filtered
		}
		if n, ok := rest("/v1/catalog/node/"); ok {
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
		name, ok := peekName(r, s.cfg.MaxBodySize, "Name")
		return ok && p.ServiceWrite(name)
	case "/v1/agent/check/register":
		id, ok := peekName(r, s.cfg.MaxBodySize, "ServiceID")
		if !ok {
			return false
		}
		if id == "" {
			return p.NodeWrite(self)
		}
		return p.ServiceWrite(s.serviceName(id))
	case "/v1/agent/maintenance", "/v1/agent/leave":
		return p.NodeWrite(self) && p.AgentWrite(self)
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

// peekName reads the body (up to limit) to find one string field, then puts
// the body back for the handler. A body that does not decode answers
// "\x00": only a token that may write every name lets the handler report
// the error.
func peekName(r *http.Request, limit int64, field string) (string, bool) {
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	if err != nil {
		return "", false
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(b, &m) != nil {
		return "\x00", true
	}
	for k, v := range m {
		if strings.EqualFold(k, field) {
			var s string
			if json.Unmarshal(v, &s) != nil {
				return "\x00", true
			}
			return s, true
		}
	}
	if field == "ServiceID" {
		return "", true
	}
	return "\x00", true
}
