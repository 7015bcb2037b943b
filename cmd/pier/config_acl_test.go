package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestConfigACLRules reads a token's rules as maps (exact names and
// prefixes keep their spelling) or as a string in Consul's rule language,
// and stops the agent on a bad rule.
func TestConfigACLRules(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (agentConfig, error) {
		p := filepath.Join(dir, "acl.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c := defaultAgentConfig()
		err := c.loadFile(p)
		return c, err
	}
	c, err := load(`
acl:
  enabled: true
  tokens_list:
    - secret: a
      accessor_id: 6a1253d2-1785-24fd-91c2-f8e78c745511
      rules:
        service: {"Web_Admin-1": deny}
        service_prefix: {"Web_": write}
        key: {"app/Lock_x": read}
        acl: read
    - secret: b
      rules: |
        service "Web_Admin-1" { policy = "deny" }
        service_prefix "Web_" { policy = "write" }
        key "app/Lock_x" { policy = "read" }
        acl = "read"
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.ACL.Tokens) != 2 {
		t.Fatalf("tokens: %+v", c.ACL.Tokens)
	}
	a, b := c.ACL.Tokens[0], c.ACL.Tokens[1]
	if a.AccessorID != "6a1253d2-1785-24fd-91c2-f8e78c745511" {
		t.Errorf("accessor_id: %q", a.AccessorID)
	}
	if a.Rules.Service["Web_Admin-1"] != "deny" || a.Rules.ServicePrefix["Web_"] != "write" || a.Rules.Key["app/Lock_x"] != "read" || a.Rules.ACL != "read" {
		t.Errorf("map rules: %+v", a.Rules)
	}
	if !reflect.DeepEqual(a.Rules, b.Rules) {
		t.Errorf("string rules %+v differ from map rules %+v", b.Rules, a.Rules)
	}
	for body, want := range map[string]string{
		"acl:\n  tokens_list:\n    - secret: a\n      rules: 'servce \"x\" { policy = \"read\" }'\n": `unknown rule "servce"`,
		"acl:\n  enabled: true\n  tokens_list:\n    - secret: a\n      rules: {service: {x: all}}\n": `service "x": policy "all"`,
		"acl:\n  tokens_list:\n    - secret: a\n      rules: {sevice: {x: read}}\n":                  `unknown key`,
		"acl:\n  enabled: true\n  tokens_list:\n    - {secret: a, accessor_id: nope}\n":              `not a UUID`,
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", body, err, want)
		}
	}
}

// TestConfigACLReplication reads Consul's keys of ACL replication:
// primary_datacenter, acl.enable_token_replication, acl.tokens.replication,
// acl.down_policy and acl.token_ttl, and refuses a down policy Consul does
// not have.
func TestConfigACLReplication(t *testing.T) {
	p := filepath.Join(t.TempDir(), "repl.yaml")
	body := "primary_datacenter: east\nacl:\n  enabled: true\n  enable_token_replication: true\n  down_policy: async-cache\n  token_ttl: 45s\n  tokens: {replication: repl-tok}\n"
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c := defaultAgentConfig()
	if err := c.loadFile(p); err != nil {
		t.Fatal(err)
	}
	a := c.ACL
	if a.PrimaryDatacenter != "east" || !a.TokenReplication || a.Replication != "repl-tok" || a.DownPolicy != "async-cache" || a.TokenTTL.String() != "45s" {
		t.Errorf("replication settings: %+v", a)
	}
	if err := os.WriteFile(p, []byte("acl:\n  enabled: true\n  down_policy: sometimes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c = defaultAgentConfig()
	if err := c.loadFile(p); err == nil || !strings.Contains(err.Error(), "down_policy") {
		t.Errorf("down_policy sometimes: %v, want an error naming down_policy", err)
	}
}
