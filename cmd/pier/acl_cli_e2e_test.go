package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// What the tests read of `pier acl ... create`'s output: the ID of a
// policy or role, the accessor and secret of a token.
var (
	idLine     = regexp.MustCompile(`(?m)^ID:\s+(\S+)$`)
	tokenLines = regexp.MustCompile(`(?m)^AccessorID:\s+(\S+)\nSecretID:\s+(\S+)$`)
)

// TestACLCLI drives `pier acl` as Consul's `consul acl` is used: a policy
// from a rules file, a token with it, the token doing what its rules allow
// and nothing else, listing, reading, deleting, and one readable line with
// exit code 1 or 2 for each mistake.
func TestACLCLI(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	a := startAgent(t, append(aclAgentArgs(t, dir, "aclcli", "data"), soloServer...)...)
	rules := filepath.Join(dir, "app.hcl")
	os.WriteFile(rules, []byte(`key_prefix "app/" { policy = "write" }`+"\n"), 0o600)
	acl := rootACL(t, a)

	out, errOut, rc := acl("policy", "create", "-name", "app-rw", "-description", "app keys", "-rules", "@"+rules)
	if rc != 0 || !strings.Contains(out, "Name:         app-rw\n") || !strings.Contains(out, `key_prefix "app/"`) {
		t.Fatalf("policy create: rc=%d\n%s%s", rc, out, errOut)
	}
	policyID := idLine.FindStringSubmatch(out)[1]

	out, errOut, rc = acl("token", "create", "-description", "deployer", "-policy-name", "app-rw")
	m := tokenLines.FindStringSubmatch(out)
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
		{[]string{"role", "frobnicate"}, 2, "unknown acl subcommand"},
	} {
		_, errOut, rc := acl(c.args...)
		line := strings.TrimSpace(errOut)
		if rc != c.rc || !strings.Contains(line, c.msg) || strings.Contains(line, "\n") {
			t.Errorf("pier acl %s: rc=%d %q, want rc %d and one line with %q", strings.Join(c.args, " "), rc, line, c.rc, c.msg)
		}
	}
}

// rootACL runs `pier acl ARGS` against a with the management token of
// aclAPIConfig.
func rootACL(t *testing.T, a *proc) func(args ...string) (string, string, int) {
	return func(args ...string) (string, string, int) {
		t.Helper()
		return pier(t, append([]string{"acl"}, append(args, "-http-addr", a.addr, "-token", "root-secret")...)...)
	}
}

// consul acl role's forms, and tokens that link to roles and identities.
func TestACLRoleCLI(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	a := startAgent(t, append(aclAgentArgs(t, dir, "aclrole", "data"), soloServer...)...)
	acl := rootACL(t, a)
	if out, errOut, rc := acl("policy", "create", "-name", "app-rw", "-rules", `key_prefix "app/" { policy = "write" }`); rc != 0 {
		t.Fatalf("policy create: rc=%d %s%s", rc, out, errOut)
	}
	out, errOut, rc := acl("role", "create", "-name", "deployer", "-description", "ships web", "-policy-name", "app-rw",
		"-service-identity", "web", "-service-identity", "db:dc1,dc2", "-node-identity", "aclrole:dc1")
	if rc != 0 || !strings.Contains(out, "Name:         deployer\nDescription:  ships web\nPolicies:\n") ||
		!strings.Contains(out, "Service Identities:\n   web (Datacenters: all)\n   db (Datacenters: dc1, dc2)\n") ||
		!strings.Contains(out, "Node Identities:\n   aclrole (Datacenter: dc1)\n") {
		t.Fatalf("role create: rc=%d\n%s%s", rc, out, errOut)
	}
	roleID := idLine.FindStringSubmatch(out)[1]

	out, errOut, rc = acl("token", "create", "-description", "ci", "-role-name", "deployer")
	m := tokenLines.FindStringSubmatch(out)
	if rc != 0 || m == nil || !strings.Contains(out, "Roles:\n   "+roleID+" - deployer\n") {
		t.Fatalf("token create -role-name: rc=%d\n%s%s", rc, out, errOut)
	}
	accessor, secret := m[1], m[2]
	kv := func(key string) int {
		_, _, rc := pier(t, "kv", "put", "-http-addr", a.addr, "-token", secret, key, "1")
		return rc
	}
	if rc := kv("app/x"); rc != 0 {
		t.Errorf("kv put through the role's policy: rc=%d", rc)
	}
	if _, _, rc := pier(t, "register", "-http-addr", a.addr, "-token", secret, "-name", "web", "-port", "80"); rc != 0 {
		t.Errorf("register web through the role's service identity: rc=%d", rc)
	}

	out, _, rc = acl("role", "list")
	if rc != 0 || !strings.Contains(out, "deployer:\n   ID:           "+roleID+"\n   Description:  ships web\n") {
		t.Errorf("role list: rc=%d\n%s", rc, out)
	}
	// update merges by default; -no-merge writes the role anew.
	out, errOut, rc = acl("role", "update", "-id", roleID, "-description", "v2", "-service-identity", "api")
	if rc != 0 || !strings.Contains(out, "Description:  v2\n") || !strings.Contains(out, "   api (Datacenters: all)\n") || !strings.Contains(out, " - app-rw\n") {
		t.Errorf("role update: rc=%d\n%s%s", rc, out, errOut)
	}
	out, errOut, rc = acl("role", "update", "-id", roleID, "-no-merge", "-name", "deployer", "-service-identity", "web")
	if rc != 0 || strings.Contains(out, "app-rw") || strings.Contains(out, "api (") {
		t.Errorf("role update -no-merge: rc=%d\n%s%s", rc, out, errOut)
	}
	if rc := kv("app/y"); rc == 0 {
		t.Errorf("kv put allowed after the role lost its policy")
	}
	out, _, rc = acl("role", "read", "-name", "deployer", "-format", "json")
	if rc != 0 || !strings.Contains(out, `"ServiceName": "web"`) {
		t.Errorf("role read -format json: rc=%d\n%s", rc, out)
	}

	// Token update: -append-role-name adds, -role-id replaces, and the
	// identities likewise.
	if _, errOut, rc := acl("role", "create", "-name", "reader", "-policy-name", "app-rw"); rc != 0 {
		t.Fatalf("role create reader: %s", errOut)
	}
	out, errOut, rc = acl("token", "update", "-accessor-id", accessor, "-append-role-name", "reader", "-append-service-identity", "cache")
	if rc != 0 || !strings.Contains(out, " - deployer\n") || !strings.Contains(out, " - reader\n") || !strings.Contains(out, "   cache (Datacenters: all)\n") {
		t.Errorf("token update -append-role-name: rc=%d\n%s%s", rc, out, errOut)
	}
	out, errOut, rc = acl("token", "update", "-accessor-id", accessor, "-role-id", roleID, "-service-identity", "db")
	if rc != 0 || strings.Contains(out, "reader") || strings.Contains(out, "cache") || !strings.Contains(out, "   db (Datacenters: all)\n") {
		t.Errorf("token update -role-id: rc=%d\n%s%s", rc, out, errOut)
	}

	if out, errOut, rc := acl("role", "delete", "-name", "deployer"); rc != 0 || !strings.Contains(out, `Role "`+roleID+`" deleted successfully`) {
		t.Errorf("role delete -name: rc=%d %s%s", rc, out, errOut)
	}
	if out, _, _ := acl("token", "read", "-accessor-id", accessor); strings.Contains(out, "deployer") {
		t.Errorf("the token still links the deleted role:\n%s", out)
	}

	for _, c := range []struct {
		args []string
		rc   int
		msg  string
	}{
		{[]string{"role", "create"}, 2, "-name is required"},
		{[]string{"role", "create", "-name", "x", "-node-identity", "n1"}, 2, "NODE:DATACENTER"},
		{[]string{"role", "create", "-name", "x", "-service-identity", "a:b:c"}, 2, "-service-identity"},
		{[]string{"role", "create", "-name", "x", "-service-identity", "Web!"}, 1, "invalid name"},
		{[]string{"role", "create", "-name", "reader"}, 1, "already exists"},
		{[]string{"role", "read"}, 2, "-id or -name"},
		{[]string{"role", "read", "-name", "deployer"}, 1, `no role "deployer"`},
		{[]string{"role", "update", "-name", "x"}, 2, "-id"},
		{[]string{"role", "update", "-id", roleID}, 1, roleID},
		{[]string{"token", "create", "-role-name", "nope"}, 1, "cannot find role nope"},
		{[]string{"token", "update", "-accessor-id", accessor, "-role-name", "a", "-append-role-name", "b"}, 2, "not both"},
	} {
		_, errOut, rc := acl(c.args...)
		line := strings.TrimSpace(errOut)
		if rc != c.rc || !strings.Contains(line, c.msg) || strings.Contains(line, "\n") {
			t.Errorf("pier acl %s: rc=%d %q, want rc %d and one line with %q", strings.Join(c.args, " "), rc, line, c.rc, c.msg)
		}
	}
}
