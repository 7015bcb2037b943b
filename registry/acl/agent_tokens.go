package acl

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
)

// agentTokens are the tokens PUT /v1/agent/token/:kind sets at run time, in
// Consul's acl-tokens.json shape. Only the ones set through the API are
// kept (and persisted); each one set wins over the configuration's.
type agentTokens struct {
	Default       string `json:"default,omitempty"`
	Agent         string `json:"agent,omitempty"`
	AgentRecovery string `json:"agent_recovery,omitempty"`
	Replication   string `json:"replication,omitempty"`
	DNS           string `json:"dns,omitempty"`
	set           map[string]bool
	agent         *tokenEntry // the API's agent token; nil: the configuration's
	recovery      *tokenEntry // nil: none
}

// agentTokenKinds maps Consul's names, current and legacy, to the field.
var agentTokenKinds = map[string]string{
	"default": "default", "acl_token": "default",
	"agent": "agent", "acl_agent_token": "agent",
	"agent_recovery": "agent_recovery", "agent_master": "agent_recovery", "acl_agent_master_token": "agent_recovery",
	"replication": "replication", "acl_replication_token": "replication",
	"dns": "dns", "dns_token": "dns",
}

func (t *agentTokens) field(kind string) *string {
	switch kind {
	case "default":
		return &t.Default
	case "agent":
		return &t.Agent
	case "agent_recovery":
		return &t.AgentRecovery
	case "dns":
		return &t.DNS
	}
	return &t.Replication
}

// withEntries makes the token entries that the agent and recovery secrets
// resolve to: the agent token gets the configuration agent token's policy;
// the recovery token, as Consul's, may write this agent and read nodes.
func (a *Authorizer) withEntries(t *agentTokens, node string) *agentTokens {
	t.agent, t.recovery = nil, nil
	if t.set["agent"] && t.Agent != "" {
		t.agent = &tokenEntry{hash: sha256.Sum256([]byte(t.Agent)), policy: a.agentPolicy.withAccessor(derivedAccessor(t.Agent)), static: true,
			view: aclTokenView{AccessorID: derivedAccessor(t.Agent), SecretID: t.Agent, Description: "Agent Token"}}
	}
	if t.AgentRecovery != "" {
		p := &Policy{allow: a.allow, accessor: derivedAccessor(t.AgentRecovery)}
		p.rules.agent.exact = map[string]access{node: accessWrite}
		p.rules.node.prefix = map[string]access{"": accessRead}
		t.recovery = &tokenEntry{hash: sha256.Sum256([]byte(t.AgentRecovery)), policy: p, static: true,
			view: aclTokenView{AccessorID: derivedAccessor(t.AgentRecovery), SecretID: t.AgentRecovery, Description: "Agent Recovery Token"}}
	}
	return t
}

// runtimeLookup checks a secret's hash against the API's agent tokens in
// constant time; nil when it is neither.
func (t *agentTokens) runtimeLookup(h [sha256.Size]byte) *tokenEntry {
	if t == nil {
		return nil
	}
	for _, e := range []*tokenEntry{t.agent, t.recovery} {
		if e != nil && subtle.ConstantTimeCompare(e.hash[:], h[:]) == 1 {
			return e
		}
	}
	return nil
}

// loadAgentTokens reads the persisted tokens at start; they win over the
// configuration's, as in Consul. A missing file is no tokens.
func (a *Authorizer) loadAgentTokens(node string) error {
	if a.tokenFile == "" {
		return nil
	}
	b, err := os.ReadFile(a.tokenFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	t := &agentTokens{}
	if err := json.Unmarshal(b, t); err != nil {
		return fmt.Errorf("acl: %s: %w", a.tokenFile, err)
	}
	t.set = map[string]bool{}
	for _, k := range []string{"default", "agent", "agent_recovery", "replication", "dns"} {
		t.set[k] = *t.field(k) != ""
	}
	a.agentToks.Store(a.withEntries(t, node))
	return nil
}

// saveAgentTokens writes the file atomically, readable by the agent only.
func (a *Authorizer) saveAgentTokens(t *agentTokens) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	tmp := a.tokenFile + ".tmp"
	if err := os.MkdirAll(filepath.Dir(a.tokenFile), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, a.tokenFile)
}

// agentToken is PUT /v1/agent/token/:kind with {"Token": "..."}.
func (s *Endpoints) agentToken(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	name := r.PathValue("kind")
	kind, ok := agentTokenKinds[name]
	if !ok {
		httpError(w, http.StatusNotFound, "Token %q is unknown", name)
		return
	}
	var in struct{ Token string }
	if !s.decodeJSONBody(w, r, &in) {
		return
	}
	// The agent and recovery tokens are credentials here (pier makes no
	// API calls of its own): only a caller that holds what they grant may
	// set them.
	if p := PolicyOf(r); p != nil && !p.management {
		switch kind {
		case "agent":
			ok = p.AgentWrite("\x00") && p.NodeWrite("\x00")
		case "agent_recovery":
			ok = p.NodeRead("\x00")
		}
		if !ok {
			Denied(w)
			return
		}
	}
	if kind == "default" && in.Token != "" && s.acl.lookup(in.Token) == nil {
		httpError(w, http.StatusBadRequest, "Token: not a token this agent knows; anonymous requests would all be refused")
		return
	}
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.agentToks.Load()
	next := &agentTokens{set: map[string]bool{}}
	if old != nil {
		*next = *old
		next.set = map[string]bool{}
		for k, v := range old.set {
			next.set[k] = v
		}
	}
	*next.field(kind) = in.Token
	next.set[kind] = true
	a.withEntries(next, s.self())
	if a.tokenFile != "" {
		if err := a.saveAgentTokens(next); err != nil {
			httpError(w, http.StatusInternalServerError, "acl: persisting the agent's tokens: %v", err)
			return
		}
	}
	a.agentToks.Store(next)
	s.log.Info("updated the agent's ACL token", "token", name)
}

// defaultEntry is the token anonymous requests act as; nil: none.
func (a *Authorizer) defaultEntry() *tokenEntry {
	if rt := a.agentToks.Load(); rt != nil && rt.set["default"] {
		if rt.Default == "" {
			return nil
		}
		return a.lookup(rt.Default)
	}
	return a.dflt
}
