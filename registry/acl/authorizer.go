package acl

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Config is Consul's acl stanza. Tokens come from two places: the
// configuration (these fields; read-only through the API, changed by a
// restart) and the /v1/acl/token and /v1/acl/policy endpoints (store.go:
// kept in the replicated KV store, so they survive restarts and reach every
// node).
type Config struct {
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
	// DNS is the token DNS reads other datacenters with (Consul's
	// tokens.dns); empty: Default.
	DNS    string
	Tokens []Token // tokens with rules
	// TokenFile keeps the tokens set through PUT /v1/agent/token/ across
	// restarts (Consul's enable_token_persistence, acl-tokens.json in the
	// data dir); they win over the fields above. "": not kept.
	TokenFile string
	// BootstrapResetFile is Consul's acl-bootstrap-reset in the data dir:
	// a file holding the reset index that PUT /v1/acl/bootstrap answered
	// lets one more bootstrap happen on the leader that reads it, and is
	// removed then. "": no reset.
	BootstrapResetFile string
	// PrimaryDatacenter is Consul's primary_datacenter: the datacenter
	// where policies, roles and global tokens are written, and that the
	// others replicate them from (replication.go). "": this agent's own.
	PrimaryDatacenter string
	// TokenReplication is Consul's acl.enable_token_replication: a
	// secondary datacenter replicates global tokens too, and may then make
	// local tokens of its own.
	TokenReplication bool
	// Replication is Consul's acl.tokens.replication: the token a
	// secondary's leader replicates with (acl:read for policies and
	// roles, acl:write for tokens).
	Replication string
	// DownPolicy is Consul's acl.down_policy: what a secondary does with
	// a token it must ask the primary about when the primary cannot be
	// asked (remote.go): "extend-cache" (the default), "async-cache",
	// "allow" or "deny".
	DownPolicy string
	// TokenTTL is Consul's acl.token_ttl: how long the primary's answer
	// about a token is kept; default 30s.
	TokenTTL time.Duration
}

// Token is one token of the configuration with its rules.
type Token struct {
	Secret string
	// AccessorID names the token in /v1/acl/tokens; empty: derived from the
	// secret by SHA-256, so every node and every restart shows the same one
	// without storing anything. A token with acl:read sees accessors, so a
	// weak secret could be guessed offline from its accessor: config
	// secrets should be random (UUIDs), or set an AccessorID.
	AccessorID  string
	Description string
	Rules       Rules
}

// Authorizer resolves tokens to policies: the configuration's, fixed at
// New, and those of the API, read from the KV store (store.go).
type Authorizer struct {
	allow     bool
	static    []*tokenEntry // the configuration's tokens, in order
	anonymous *Policy
	dflt      *tokenEntry // tokens.default; nil: none
	// What PUT /v1/agent/token/ changes (agent_tokens.go).
	plainAnon   *Policy     // anonymous without any default token
	agentPolicy *Policy     // what an agent token may do
	cfgAgent    *tokenEntry // tokens.agent; nil: none
	// The secrets of tokens.default, .agent and .dns, which this agent
	// sends on its own reads (AgentSecret).
	cfgSecrets map[string]string
	tokenFile  string
	agentToks  atomic.Pointer[agentTokens] // nil: none set through the API
	// The parts below are set once by Attach, before the first request.
	reg *registry.Registry // nil: configuration tokens only
	w   Writer             // where the API's objects are written (writer.go)
	// agreedOnly: the objects are read from the servers' agreed store only
	// (SetWriter).
	agreedOnly bool
	log        *slog.Logger
	// resetFile is Config.BootstrapResetFile; initialMgmt whether the
	// configuration has a management token (bootstrap.go).
	resetFile   string
	initialMgmt bool
	// mu serializes rebuilds of the table and the API's writes (so that a
	// name checked free is still free when written, on this node).
	mu    sync.Mutex
	table atomic.Pointer[aclTable]
	// Replication between datacenters (replication.go).
	primaryDC        string  // Config.PrimaryDatacenter
	tokenReplication bool    // Config.TokenReplication
	primary          Primary // nil: no way to the primary
	repl             replication
	downPolicy       string        // Config.DownPolicy
	tokenTTL         time.Duration // Config.TokenTTL
	remote           remoteTokens  // the primary's answers (remote.go)
}

// New validates cfg; nil with no error when ACLs are off.
func New(cfg Config) (*Authorizer, error) {
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
	switch cfg.DownPolicy {
	case "":
		cfg.DownPolicy = DownExtendCache
	case DownExtendCache, DownAsyncCache, DownAllow, DownDeny:
	default:
		return nil, fmt.Errorf("acl: down_policy %q is not extend-cache, async-cache, allow or deny", cfg.DownPolicy)
	}
	if cfg.TokenTTL < 0 {
		return nil, fmt.Errorf("acl: token_ttl %v is negative", cfg.TokenTTL)
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 30 * time.Second // Consul's
	}
	a := &Authorizer{allow: allow, downPolicy: cfg.DownPolicy, tokenTTL: cfg.TokenTTL, log: slog.New(slog.DiscardHandler), tokenFile: cfg.TokenFile,
		resetFile: cfg.BootstrapResetFile, initialMgmt: cfg.InitialManagement != "",
		cfgSecrets: map[string]string{"default": cfg.Default, "agent": cfg.Agent, "dns": cfg.DNS, "replication": cfg.Replication},
		primaryDC:  cfg.PrimaryDatacenter, tokenReplication: cfg.TokenReplication}
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
			policy: p.withAccessor(accessor),
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
	// And read on every service, as Consul's recommended agent policy: the
	// front door reads other datacenters' instances with it.
	agent.rules.service.prefix = map[string]access{"": accessRead}
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
	a.anonymous = &Policy{allow: allow, accessor: anonymousAccessor}
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
	t := a.current()
	if e := a.lookupIn(t, secret); e != nil {
		return e.policy
	}
	if a.askPrimary(t) {
		return a.resolveRemote(secret) // remote.go
	}
	return nil
}

// ResolveLocal is Resolve without asking the primary datacenter: for the
// requests a secondary makes of the primary (FromSecondaryHeader), so that
// two datacenters that each name the other their primary cannot ask each
// other about a token without end.
func (a *Authorizer) ResolveLocal(secret string) *Policy {
	if secret == "" {
		return a.Resolve(secret)
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

// RequestToken reads the token the way Consul's clients send it.
func RequestToken(r *http.Request) string {
	if t := r.Header.Get("X-Consul-Token"); t != "" {
		return t
	}
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "Bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return r.URL.Query().Get("token")
}

type policyKey struct{}

// WithPolicy leaves the request's policy in its context, for PolicyOf.
func WithPolicy(r *http.Request, p *Policy) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), policyKey{}, p))
}

// PolicyOf answers the request's policy; nil when ACLs are off.
func PolicyOf(r *http.Request) *Policy {
	p, _ := r.Context().Value(policyKey{}).(*Policy)
	return p
}

// MayReadService is the filter for list answers: true when ACLs are off.
func MayReadService(r *http.Request, name string) bool {
	p := PolicyOf(r)
	return p == nil || p.ServiceRead(name)
}

// Denied answers Consul's 403 for a token that may not do what it asks.
func Denied(w http.ResponseWriter) {
	httpError(w, http.StatusForbidden, "Permission denied")
}

// DeniedOn answers the 403 Consul gives where it names what was missing:
// the token's accessor, the permission (perm, as "session:write") and
// the name it was needed on.
func DeniedOn(w http.ResponseWriter, p *Policy, perm, name string) {
	switch {
	case p == nil || p.accessor == "":
		Denied(w)
	case p.accessor == anonymousAccessor:
		httpError(w, http.StatusForbidden, "Permission denied: anonymous token lacks permission '%s' on %q. "+
			"The anonymous token is used implicitly when a request does not specify a token.", perm, name)
	default:
		httpError(w, http.StatusForbidden, "Permission denied: token with AccessorID '%s' lacks permission '%s' on %q", p.accessor, perm, name)
	}
}

// AgentSecret answers the token this agent sends on its own reads of kind,
// as Consul's token store: "dns" (tokens.dns, else the default), "agent"
// (tokens.agent, else the default) or "default"; "" for none (anonymous),
// and with ACLs off (a nil Authorizer). A token set through PUT
// /v1/agent/token/ wins over the configuration's.
func (a *Authorizer) AgentSecret(kind string) string {
	if a == nil {
		return ""
	}
	rt := a.agentToks.Load()
	pick := func(k string) string {
		if rt != nil && rt.set[k] {
			return *rt.field(k)
		}
		return a.cfgSecrets[k]
	}
	dflt := pick("default")
	if kind == "default" {
		return dflt
	}
	return cmp.Or(pick(kind), dflt)
}
