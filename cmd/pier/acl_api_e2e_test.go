package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

const aclAPIConfig = `
acl:
  enabled: true
  default_policy: deny
  tokens:
    initial_management: root-secret
  tokens_list:
    - secret: kv-secret
      description: rules in Consul's language
      rules: |
        key_prefix "app/" { policy = "write" }
        key "app/locked" { policy = "read" }
`

// aclAgentArgs writes aclAPIConfig to dir/pier.yaml and answers the flags
// of an agent named node that reads it, with its data dir under dir.
func aclAgentArgs(t *testing.T, dir, node, data string) []string {
	t.Helper()
	cfg := filepath.Join(dir, "pier.yaml")
	if err := os.WriteFile(cfg, []byte(aclAPIConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"-node", node, "-data-dir", filepath.Join(dir, data), "-bind", "127.0.0.1", "-config-file", cfg}
}

// TestACLAPITokens creates a policy and a token through /v1/acl on one
// agent, and uses the token on a second agent (the ACL store rides the
// replicated KV store) and on the first after a restart (persisted in the
// data dir). It also drives a config token whose rules are HCL.
func TestACLAPITokens(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	argsA := append(aclAgentArgs(t, dir, "acl1", "a"), soloServer...)
	a := startAgent(t, argsA...)
	root := "X-Consul-Token: root-secret"

	code, body := curl(t, "-X", "PUT", "-H", root, "-d", `{"Name":"web-deploy","Rules":"service_prefix \"web\" { policy = \"write\" }"}`, "http://"+a.addr+"/v1/acl/policy")
	if code != 200 {
		t.Fatalf("create policy: %d %s", code, body)
	}
	code, body = curl(t, "-X", "PUT", "-H", root, "-d", `{"Description":"web","Policies":[{"Name":"web-deploy"}]}`, "http://"+a.addr+"/v1/acl/token")
	var tok struct {
		AccessorID, SecretID string
		Policies             []struct{ ID, Name string }
	}
	if err := json.Unmarshal([]byte(body), &tok); code != 200 || err != nil || tok.SecretID == "" || len(tok.Policies) != 1 {
		t.Fatalf("create token: %d %s", code, body)
	}
	hdr := "X-Consul-Token: " + tok.SecretID
	register := func(p *proc, name string) int {
		code, _ := curl(t, "-X", "PUT", "-H", hdr, "-d", `{"Name":"`+name+`"}`, "http://"+p.addr+"/v1/agent/service/register")
		return code
	}
	if c := register(a, "web-a"); c != 200 {
		t.Errorf("register web-a on a: %d", c)
	}
	if c := register(a, "db"); c != 403 {
		t.Errorf("register db on a: %d", c)
	}

	// The config token's HCL rules: an exact rule beats the prefix.
	kv := "X-Consul-Token: kv-secret"
	if code, body := curl(t, "-X", "PUT", "-H", kv, "-d", "1", "http://"+a.addr+"/v1/kv/app/x"); code != 200 {
		t.Errorf("config token writes app/x: %d %s", code, body)
	}
	if code, _ := curl(t, "-X", "PUT", "-H", kv, "-d", "1", "http://"+a.addr+"/v1/kv/app/locked"); code != 403 {
		t.Errorf("config token writes app/locked: %d", code)
	}

	// A second agent learns the token through gossip.
	b := startAgent(t, append(aclAgentArgs(t, dir, "acl2", "b"), "-join", a.gossip)...)
	eventually.NoError(t, 20*time.Second, "the token works on the second agent", func() error {
		if c := register(b, "web-b"); c != 200 {
			return fmt.Errorf("register web-b: %d; log:\n%s", c, b.logs())
		}
		return nil
	})
	if c := register(b, "db"); c != 403 {
		t.Errorf("register db on b: %d", c)
	}
	b.stop(syscall.SIGTERM)

	// The first agent restarts alone: the token is in its data dir.
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop: %v\n%s", err, a.logs())
	}
	a2 := startAgent(t, argsA...)
	// A restarted server of one elects itself before its Raft state,
	// tokens included, is applied again.
	waitLeader(t, a2)
	eventually.True(t, 30*time.Second, "the token resolves after the restart", func() bool {
		code, _ := curl(t, "-H", hdr, "http://"+a2.addr+"/v1/acl/token/self")
		return code == 200
	})
	if c := register(a2, "web-c"); c != 200 {
		t.Errorf("register web-c after a restart: %d", c)
	}
	code, body = curl(t, "-H", hdr, "http://"+a2.addr+"/v1/acl/token/self")
	if code != 200 || !strings.Contains(body, tok.AccessorID) {
		t.Errorf("token self after a restart: %d %s", code, body)
	}
	// Deleted on the restarted agent: refused at once.
	if code, body := curl(t, "-X", "DELETE", "-H", root, "http://"+a2.addr+"/v1/acl/token/"+tok.AccessorID); code != 200 {
		t.Errorf("delete: %d %s", code, body)
	}
	if c := register(a2, "web-d"); c != 403 {
		t.Errorf("register with a deleted token: %d", c)
	}

	for _, p := range []*proc{a, a2} {
		logs := p.logs()
		for _, s := range []string{"root-secret", "kv-secret", tok.SecretID} {
			if strings.Contains(logs, s) {
				t.Errorf("a secret is in the logs:\n%s", logs)
			}
		}
	}
}
