package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestACLCLI drives `pier acl` as Consul's `consul acl` is used: a policy
// from a rules file, a token with it, the token doing what its rules allow
// and nothing else, listing, reading, deleting, and one readable line with
// exit code 1 or 2 for each mistake.
func TestACLCLI(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(aclAPIConfig), 0o600)
	a := startAgent(t, "-node", "aclcli", "-data-dir", filepath.Join(dir, "data"), "-bind", "127.0.0.1", "-config-file", cfg)
	rules := filepath.Join(dir, "app.hcl")
	os.WriteFile(rules, []byte(`key_prefix "app/" { policy = "write" }`+"\n"), 0o600)
	acl := func(args ...string) (string, string, int) {
		t.Helper()
		return pier(t, append([]string{"acl"}, append(args, "-http-addr", a.addr, "-token", "root-secret")...)...)
	}

	out, errOut, rc := acl("policy", "create", "-name", "app-rw", "-description", "app keys", "-rules", "@"+rules)
	if rc != 0 || !strings.Contains(out, "Name:         app-rw\n") || !strings.Contains(out, `key_prefix "app/"`) {
		t.Fatalf("policy create: rc=%d\n%s%s", rc, out, errOut)
	}
	policyID := regexp.MustCompile(`(?m)^ID:\s+(\S+)$`).FindStringSubmatch(out)[1]

	out, errOut, rc = acl("token", "create", "-description", "deployer", "-policy-name", "app-rw")
	m := regexp.MustCompile(`(?m)^AccessorID:\s+(\S+)\nSecretID:\s+(\S+)$`).FindStringSubmatch(out)
	if rc != 0 || m == nil || !strings.Contains(out, "   "+policyID+" - app-rw\n") {
		t.Fatalf("token create: rc=%d\n%s%s", rc, out, errOut)
	}
	accessor, secret := m[1], m[2]

	// The token does what its policy says, through the KV CLI.
	kv := func(args ...string) int {
		_, _, rc := pier(t, append([]string{"kv", args[0], "-http-addr", a.addr, "-token", secret}, args[1:]...)...)
		return rc
	}
	if rc := kv("put", "app/colour", "blue"); rc != 0 {
		t.Errorf("kv put app/colour with the new token: rc=%d", rc)
	}
	if rc := kv("put", "other/x", "1"); rc == 0 {
		t.Errorf("kv put other/x with the new token succeeded")
	}
	out, _, rc = pier(t, "acl", "token", "read", "-self", "-http-addr", a.addr, "-token", secret)
	if rc != 0 || !strings.Contains(out, "Description:      deployer\n") {
		t.Errorf("token read -self: rc=%d\n%s", rc, out)
	}

	out, _, rc = acl("token", "list")
	if rc != 0 || !strings.Contains(out, "AccessorID:       "+accessor+"\n") || !strings.Contains(out, "global-management") {
		t.Errorf("token list: rc=%d\n%s", rc, out)
	}
	out, _, rc = acl("policy", "list")
	if rc != 0 || !strings.Contains(out, "app-rw:\n   ID:           "+policyID+"\n   Description:  app keys\n") ||
		!strings.Contains(out, "global-management:\n") {
		t.Errorf("policy list: rc=%d\n%s", rc, out)
	}
	out, _, rc = acl("policy", "read", "-name", "app-rw", "-format", "json")
	if rc != 0 || !strings.Contains(out, `"ID": "`+policyID+`"`) {
		t.Errorf("policy read -format json: rc=%d\n%s", rc, out)
	}
	out, _, rc = acl("token", "read", "-id", accessor)
	if rc != 0 || !strings.Contains(out, "SecretID:         "+secret+"\n") {
		t.Errorf("token read -id: rc=%d\n%s", rc, out)
	}

	// Update: a new description, a policy appended, then the set replaced.
	if out, errOut, rc := acl("policy", "create", "-name", "svc-read", "-rules", `service_prefix "" { policy = "read" }`); rc != 0 {
		t.Fatalf("policy create svc-read: rc=%d %s%s", rc, out, errOut)
	}
	out, errOut, rc = acl("token", "update", "-accessor-id", accessor, "-description", "deployer v2", "-append-policy-name", "svc-read")
	if rc != 0 || !strings.Contains(out, "Description:      deployer v2\n") || !strings.Contains(out, " - app-rw\n") || !strings.Contains(out, " - svc-read\n") {
		t.Errorf("token update -append-policy-name: rc=%d\n%s%s", rc, out, errOut)
	}
	out, errOut, rc = acl("token", "update", "-id", accessor, "-policy-name", "app-rw")
	if rc != 0 || !strings.Contains(out, "Description:      deployer v2\n") || strings.Contains(out, "svc-read") || !strings.Contains(out, " - app-rw\n") {
		t.Errorf("token update -policy-name: rc=%d\n%s%s", rc, out, errOut)
	}
	if rc := kv("put", "app/colour", "green"); rc != 0 {
		t.Errorf("kv put with the updated token: rc=%d", rc)
	}

	// Without the management token, listing is refused.
	if _, errOut, rc := pier(t, "acl", "token", "list", "-http-addr", a.addr, "-token", secret); rc != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("token list with a KV token: rc=%d %q", rc, errOut)
	}

	if out, errOut, rc := acl("token", "delete", "-accessor-id", accessor); rc != 0 || !strings.Contains(out, "deleted") {
		t.Errorf("token delete: rc=%d %s%s", rc, out, errOut)
	}
	if rc := kv("put", "app/colour", "red"); rc == 0 {
		t.Errorf("a deleted token still writes")
	}
	if out, errOut, rc := acl("policy", "delete", "-name", "app-rw"); rc != 0 || !strings.Contains(out, "deleted") {
		t.Errorf("policy delete -name: rc=%d %s%s", rc, out, errOut)
	}

	for _, c := range []struct {
		args []string
		rc   int
		msg  string
	}{
		{[]string{"policy", "create", "-rules", `key "x" { policy = "read" }`}, 2, "-name is required"},
		{[]string{"policy", "create", "-name", "bad", "-rules", `key "x" { policy = "sometimes" }`}, 1, "sometimes"},
		{[]string{"policy", "create", "-name", "nofile", "-rules", "@" + filepath.Join(dir, "missing.hcl")}, 1, "-rules"},
		{[]string{"policy", "read"}, 2, "-id or -name"},
		{[]string{"policy", "read", "-name", "app-rw"}, 1, `no policy "app-rw"`},
		{[]string{"token", "read"}, 2, "-accessor-id"},
		{[]string{"token", "create", "-policy-name", "nope"}, 1, "nope"},
		{[]string{"token", "frobnicate"}, 2, "unknown acl subcommand"},
		{[]string{"token", "update", "-description", "x"}, 2, "-accessor-id"},
		{[]string{"token", "update", "-accessor-id", accessor, "-policy-name", "a", "-append-policy-name", "b"}, 2, "not both"},
		{[]string{"token", "update", "-accessor-id", accessor}, 1, accessor},
		{[]string{"role", "list"}, 2, "unknown acl subcommand"},
	} {
		_, errOut, rc := acl(c.args...)
		line := strings.TrimSpace(errOut)
		if rc != c.rc || !strings.Contains(line, c.msg) || strings.Contains(line, "\n") {
			t.Errorf("pier acl %s: rc=%d %q, want rc %d and one line with %q", strings.Join(c.args, " "), rc, line, c.rc, c.msg)
		}
	}
}
