package api_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry/api"
)

const (
	kvReadTok  = "66666666-kv-read"
	agentTok   = "77777777-agent"
	agentWrTok = "88888888-agent-write-only"
)

func tokenACL(file string) api.ACLConfig {
	c := mgmtACL()
	c.Agent = agentTok
	c.TokenFile = file
	c.Tokens = []api.ACLToken{
		{Secret: kvReadTok, Description: "kv read", Rules: api.ACLRules{KeyPrefix: map[string]string{"app/": "read"}}},
		{Secret: agentWrTok, Description: "agent write", Rules: api.ACLRules{Agent: map[string]string{"node1": "write"}}},
	}
	return c
}

// put sends PUT path with body and the token; it answers the status.
func put(t *testing.T, base, path, body, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", base+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b := make([]byte, 512)
	n, _ := resp.Body.Read(b)
	return resp.StatusCode, strings.TrimSpace(string(b[:n]))
}

func withToken(t *testing.T, a *agent, token string) *consul.Client {
	t.Helper()
	c, err := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(a.base, "http://"), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAgentTokenDefault(t *testing.T) {
	file := filepath.Join(t.TempDir(), "acl-tokens.json")
	a := startAPIAgent(t, func(c *api.Config) { c.ACL = tokenACL(file) })
	mgmt := withToken(t, a, mgmtTok).Agent()
	anonKV := a.client.KV()
	if _, _, err := anonKV.Get("app/x", nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("anonymous read before a default token: %v, want 403", err)
	}
	if _, err := mgmt.UpdateDefaultACLToken(kvReadTok, nil); err != nil {
		t.Fatalf("UpdateDefaultACLToken: %v", err)
	}
	// Anonymous requests now act as the default token.
	if _, _, err := anonKV.Get("app/x", nil); err != nil {
		t.Errorf("anonymous read with a kv-read default token: %v", err)
	}
	if self, _, err := a.client.ACL().TokenReadSelf(nil); err != nil || self.Description != "kv read" {
		t.Errorf("token self without a token: %+v, %v; want the default token", self, err)
	}
	if code, body := put(t, a.base, "/v1/agent/token/default", `{"Token":"no-such-token"}`, mgmtTok); code != 400 || !strings.Contains(body, "Token") {
		t.Errorf("unknown default token: %d %q, want 400 naming Token", code, body)
	}

	// Kept across a restart when persistence is on, readable by the agent only.
	st, err := os.Stat(file)
	if err != nil {
		t.Fatalf("acl-tokens.json: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("acl-tokens.json mode %v, want 0600", st.Mode().Perm())
	}
	var saved map[string]string
	b, _ := os.ReadFile(file)
	if json.Unmarshal(b, &saved) != nil || saved["default"] != kvReadTok {
		t.Errorf("acl-tokens.json = %s, want Consul's {\"default\": ...}", b)
	}
	b2 := startAPIAgent(t, func(c *api.Config) { c.ACL = tokenACL(file) })
	if _, _, err := b2.client.KV().Get("app/x", nil); err != nil {
		t.Errorf("after a restart, anonymous read: %v; the persisted default token was not loaded", err)
	}

	// Legacy name; an empty token puts anonymous back on the default policy.
	if code, body := put(t, a.base, "/v1/agent/token/acl_token", `{"Token":""}`, mgmtTok); code != 200 {
		t.Fatalf("PUT acl_token: %d %s", code, body)
	}
	if _, _, err := anonKV.Get("app/x", nil); err == nil {
		t.Error("anonymous read after clearing the default token: allowed, want 403")
	}
}

func TestAgentTokenAgentAndRecovery(t *testing.T) {
	a := startAPIAgent(t, func(c *api.Config) { c.ACL = tokenACL("") })
	mgmt := withToken(t, a, mgmtTok).Agent()
	maint := func(tok string) int {
		code, _ := put(t, a.base, "/v1/agent/maintenance?enable=false", "", tok)
		return code
	}
	if code := maint(agentTok); code != 200 {
		t.Fatalf("configured agent token: maintenance %d, want 200", code)
	}
	if _, err := mgmt.UpdateAgentACLToken("99999999-new-agent", nil); err != nil {
		t.Fatalf("UpdateAgentACLToken: %v", err)
	}
	if code := maint("99999999-new-agent"); code != 200 {
		t.Errorf("new agent token: maintenance %d, want 200", code)
	}
	if code := maint(agentTok); code != 403 {
		t.Errorf("replaced agent token: maintenance %d, want 403", code)
	}

	if _, err := mgmt.UpdateAgentRecoveryACLToken("aaaaaaaa-recovery", nil); err != nil {
		t.Fatalf("UpdateAgentRecoveryACLToken: %v", err)
	}
	if _, err := withToken(t, a, "aaaaaaaa-recovery").Agent().Self(); err != nil {
		t.Errorf("recovery token reading the agent: %v", err)
	}
	if code := maint("aaaaaaaa-recovery"); code != 403 {
		t.Errorf("recovery token: maintenance (node write) %d, want 403", code)
	}
	if _, err := mgmt.UpdateReplicationACLToken("bbbbbbbb-repl", nil); err != nil {
		t.Errorf("UpdateReplicationACLToken: %v", err)
	}

	// agent:write is needed (Consul's rule), and an agent token, which may
	// write every node here, only from a caller who may too.
	if code, _ := put(t, a.base, "/v1/agent/token/replication", `{"Token":"x"}`, kvReadTok); code != 403 {
		t.Errorf("kv-read token setting a token: %d, want 403", code)
	}
	if code, _ := put(t, a.base, "/v1/agent/token/agent", `{"Token":"x"}`, agentWrTok); code != 403 {
		t.Errorf("agent:write-only token setting the agent token: %d, want 403", code)
	}
	if code, body := put(t, a.base, "/v1/agent/token/nope", `{"Token":"x"}`, mgmtTok); code != 404 || body != `Token "nope" is unknown` {
		t.Errorf("unknown kind: %d %q", code, body)
	}

	off := startAgentWith(t, nil)
	if _, err := off.client.Agent().UpdateDefaultACLToken("x", nil); err == nil || !strings.Contains(err.Error(), "ACL support disabled") {
		t.Errorf("ACLs off: %v, want 401 ACL support disabled", err)
	}
}
