package main

// The built agent against what Consul's clients and configs expect of a
// Consul agent (issue 20).

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"
)

// TestConsulACLConfig: the acl stanza as Consul's tooling writes it starts
// the agent: tokens.master is the old name of initial_management (with a
// warning in the log), and one secret is both the management and the agent
// token.
func TestConsulACLConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "acl.json")
	os.WriteFile(cfg, []byte(`{"acl":{"enabled":true,"default_policy":"deny","tokens":{"master":"root","agent":"root"}}}`), 0o600)
	a := startAgent(t, "-dev", "-config-file", cfg)
	if l := a.logs(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "acl.tokens.master is deprecated") {
		t.Errorf("no deprecation warning for tokens.master:\n%s", l)
	}
	root, err := consul.NewClient(&consul.Config{Address: a.addr, Token: "root"})
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web", Port: 80}); err != nil {
		t.Errorf("register with the master token: %v", err)
	}
	if tok, _, err := root.ACL().TokenReadSelf(nil); err != nil || len(tok.Policies) != 1 || tok.Policies[0].Name != "global-management" {
		t.Errorf("the master token is not the management token: %+v %v", tok, err)
	}
	if _, err := root.Agent().Self(); err != nil {
		t.Errorf("agent/self with the agent token: %v", err)
	}
	anon, err := consul.NewClient(&consul.Config{Address: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := anon.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "db", Port: 80}); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("anonymous register with default_policy deny: %v, want 403", err)
	}
}
