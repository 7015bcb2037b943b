package api

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pier-dev/pier/registry"
)

// ACLConfig is Consul's acl stanza. Tokens come from two places: the
// configuration (these fields; read-only through the API, changed by a
// restart) and the /v1/acl/token and /v1/acl/policy endpoints (acl_store.go:
// kept in the replicated KV store, so they survive restarts and reach every
// node).
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
	// TokenFile keeps the tokens set through PUT /v1/agent/token/ across
	// restarts (Consul's enable_token_persistence, acl-tokens.json in the
	// data dir); they win over the fields above. "": not kept.
	TokenFile string
}

// ACLToken is one token of the configuration with its rules.
type ACLToken struct {
	Secret string
	// AccessorID names the token in /v1/acl/tokens; empty: derived from the
	// secret by SHA-256, so every node and every restart shows the same one
	// without storing anything. A token with acl:read sees accessors, so a
	// weak secret could be guessed offline from its accessor: config
	// secrets should be random (UUIDs), or set an AccessorID.
	AccessorID  string
	Description string
	Rules       ACLRules
}

// Authorizer resolves tokens to policies: the configuration's, fixed at
// NewAuthorizer, and those of the API, read from the KV store (acl_store.go).
type Authorizer struct {
	allow     bool
	static    []*tokenEntry // the configuration's tokens, in order
	anonymous *Policy
	dflt      *tokenEntry // tokens.default; nil: none
	// What PUT /v1/agent/token/ changes (acl_agent_tokens.go).
	plainAnon   *Policy     // anonymous without any default token
	agentPolicy *Policy     // what an agent token may do
	cfgAgent    *tokenEntry // tokens.agent; nil: none
	tokenFile   string
	agentToks   atomic.Pointer[agentTokens] // nil: none set through the API
	// The parts below are set once by the Server before it serves.
	reg *registry.Registry // nil: configuration tokens only
	log *slog.Logger
	// mu serializes rebuilds of the table and the API's writes (so that a
	// name checked free is still free when written, on this node).
	mu    sync.Mutex
	table atomic.Pointer[aclTable]
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
	a := &Authorizer{allow: allow, log: slog.New(slog.DiscardHandler), tokenFile: cfg.TokenFile}
	seen := map[string]bool{}
	accessors := map[string]bool{}
	add := func(secret, accessor, desc string, p *Policy, links []aclLink) error {
		if secret == "" {
			return nil
		}
		if seen[secret] {
			// Never print a secret, even in a config error.
			return errors.New("acl: a token secret is defined twice")
		}
		seen[secret] = true
		if accessor == "" {
			accessor = derivedAccessor(secret)
		} else if !validUUID(accessor) {
			return fmt.Errorf("acl: token %q: accessor_id %q is not a UUID", desc, accessor)
		}
		if accessors[accessor] || accessor == anonymousAccessor {
			return fmt.Errorf("acl: accessor_id %s is used twice", accessor)
		}
		accessors[accessor] = true
		a.static = append(a.static, &tokenEntry{
			hash:   sha256.Sum256([]byte(secret)),
			policy: p,
			static: true,
			view:   aclTokenView{AccessorID: accessor, SecretID: secret, Description: desc, Policies: links},
		})
		return nil
	}
	if err := add(cfg.InitialManagement, "", "Initial Management Token", &Policy{management: true},
		[]aclLink{{ID: managementPolicyID, Name: managementPolicyName}}); err != nil {
		return nil, err
	}
	agent := &Policy{allow: allow}
	agent.rules.agent.prefix = map[string]access{"": accessWrite}
	agent.rules.node.prefix = map[string]access{"": accessWrite}
	// Consul lets one secret be both the management and the agent token
	// (its quick-start configs do); the management token covers the rest.
	if cfg.Agent != cfg.InitialManagement {
		if err := add(cfg.Agent, "", "Agent Token", agent, nil); err != nil {
			return nil, err
		}
	}
	a.agentPolicy = agent
	if cfg.Agent != "" {
		a.cfgAgent = a.static[len(a.static)-1]
	}
	for i, t := range cfg.Tokens {
		if t.Secret == "" {
			return nil, fmt.Errorf("acl: tokens_list[%d] (%s): secret is empty", i, t.Description)
		}
		rs, err := compileRules(t.Rules)
		if err != nil {
			return nil, fmt.Errorf("acl: tokens_list[%d] (%s): %w", i, t.Description, err)
		}
		if err := add(t.Secret, t.AccessorID, t.Description, &Policy{allow: allow, rules: *rs}, nil); err != nil {
			return nil, err
		}
	}
	a.anonymous = &Policy{allow: allow}
	a.plainAnon = a.anonymous
	a.table.Store(a.build(0, nil))
	if cfg.Default != "" {
		if a.dflt = a.lookup(cfg.Default); a.dflt == nil {
			return nil, errors.New("acl: tokens.default is not a defined token")
		}
		a.anonymous = a.dflt.policy
	}
	return a, nil
}

// Resolve answers the policy of secret: the anonymous one for "", nil for
// an unknown token.
func (a *Authorizer) Resolve(secret string) *Policy {
	if secret == "" {
		if rt := a.agentToks.Load(); rt != nil && rt.set["default"] {
			if rt.Default == "" {
				return a.plainAnon
			}
			if e := a.lookup(rt.Default); e != nil {
				return e.policy
			}
			return nil // a default token since deleted: "ACL not found", as Consul
		}
		return a.anonymous
	}
	if e := a.lookup(secret); e != nil {
		return e.policy
	}
	return nil
}

// lookup finds a token by its secret. The table is keyed by the secret's
// SHA-256, so the map's own comparisons can at most reveal bits of a hash,
// which tells an attacker nothing about which secret to try next; the final
// check is in constant time all the same, and its cost does not depend on
// the guess's length.
func (a *Authorizer) lookup(secret string) *tokenEntry {
	return a.lookupIn(a.current(), secret)
}

func (a *Authorizer) lookupIn(t *aclTable, secret string) *tokenEntry {
	// A UUID is longer than the 32 bytes a []byte(string) conversion may
	// keep on the stack: copy it into a larger stack buffer instead.
	var buf [128]byte
	h := sha256.Sum256(append(buf[:0], secret...))
	e := t.bySecret[h]
	rt := a.agentToks.Load()
	if e != nil && e == a.cfgAgent && rt != nil && rt.set["agent"] {
		e = nil // replaced through PUT /v1/agent/token/agent
	}
	if e == nil || subtle.ConstantTimeCompare(e.hash[:], h[:]) != 1 {
		return rt.runtimeLookup(h)
	}
	return e
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
	if strings.HasPrefix(path, "/debug/") {
		return p.management || p.OperatorRead() // Go's profiles, as Consul's
	}
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
