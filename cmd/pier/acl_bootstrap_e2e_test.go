package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestACLBootstrapCLI: `pier acl bootstrap` prints the first management
// token as `consul acl bootstrap` does, once; the second answers Consul's
// refusal with the reset index, and writing it into the data dir's
// acl-bootstrap-reset allows one more.
func TestACLBootstrapCLI(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte("acl:\n  enabled: true\n  default_policy: deny\n"), 0o600)
	data := filepath.Join(dir, "data")
	a := startAgent(t, append(soloServer, "-node", "aclboot", "-data-dir", data, "-bind", "127.0.0.1", "-config-file", cfg)...)

	out, errOut, rc := pier(t, "acl", "bootstrap", "-http-addr", a.addr)
	m := regexp.MustCompile(`(?m)^AccessorID:\s+(\S+)\nSecretID:\s+(\S+)$`).FindStringSubmatch(out)
	if rc != 0 || m == nil || !strings.Contains(out, "Description:      Bootstrap Token (Global Management)\n") ||
		!strings.Contains(out, "   00000000-0000-0000-0000-000000000001 - global-management\n") {
		t.Fatalf("acl bootstrap: rc=%d\n%s%s", rc, out, errOut)
	}
	if out, errOut, rc := pier(t, "acl", "token", "list", "-http-addr", a.addr, "-token", m[2]); rc != 0 || !strings.Contains(out, m[1]) {
		t.Fatalf("the bootstrap token does not manage: rc=%d\n%s%s", rc, out, errOut)
	}
	out, errOut, rc = pier(t, "acl", "bootstrap", "-http-addr", a.addr)
	idx := regexp.MustCompile(`ACL bootstrap no longer allowed \(reset index: (\d+)\)`).FindStringSubmatch(errOut)
	if rc == 0 || idx == nil || !strings.Contains(errOut, "Failed ACL bootstrapping") {
		t.Fatalf("second acl bootstrap: rc=%d\n%s%s", rc, out, errOut)
	}
	os.WriteFile(filepath.Join(data, "acl-bootstrap-reset"), []byte(idx[1]), 0o600)
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("6a1f6f8c-7b4f-4b0e-9f57-5c3a7d1e2f10\n"), 0o600)
	if out, errOut, rc := pier(t, "acl", "bootstrap", "-http-addr", a.addr, secret); rc != 0 || !strings.Contains(out, "SecretID:         6a1f6f8c-7b4f-4b0e-9f57-5c3a7d1e2f10\n") {
		t.Fatalf("acl bootstrap after a reset: rc=%d\n%s%s", rc, out, errOut)
	}
}
