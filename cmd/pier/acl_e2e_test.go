package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestACLTokens runs the built agent with the acl stanza of a config file and
// drives it with curl and the pier CLI.
func TestACLTokens(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(`
acl:
  enabled: true
  default_policy: deny
  tokens:
    initial_management: root-secret
    default: anon-secret
  tokens_list:
    - secret: web-secret
      description: deploys web_*
      rules:
        service_prefix:
          web_: write
          "": read
        key_prefix:
          app/: write
    - secret: anon-secret
      description: anonymous read
      rules:
        service_prefix:
          "": read
`), 0o600)
	a := startAgent(t, "-dev", "-config-file", cfg)
	base := "http://" + a.addr

	code, body := curl(t, "-X", "PUT", "-d", `{"Name":"web_a","Port":80}`, base+"/v1/agent/service/register")
	if code != 403 || strings.TrimSpace(body) != "Permission denied" {
		t.Errorf("anonymous register: %d %q", code, body)
	}
	code, body = curl(t, "-X", "PUT", "-H", "X-Consul-Token: web-secret", "-d", `{"Name":"web_a","Port":80}`, base+"/v1/agent/service/register")
	if code != 200 {
		t.Errorf("web token registers web_a: %d %q", code, body)
	}
	code, _ = curl(t, "-X", "PUT", "-H", "Authorization: Bearer web-secret", "-d", `{"Name":"db"}`, base+"/v1/agent/service/register")
	if code != 403 {
		t.Errorf("web token registers db: %d", code)
	}
	code, _ = curl(t, "-X", "PUT", "-d", `{"Name":"db"}`, base+"/v1/agent/service/register?token=root-secret")
	if code != 200 {
		t.Errorf("management registers db: %d", code)
	}
	code, body = curl(t, base+"/v1/catalog/services")
	if code != 200 || !strings.Contains(body, "web_a") || !strings.Contains(body, "db") {
		t.Errorf("anonymous read: %d %s", code, body)
	}

	// The agent's metrics: agent:read on /v1/agent/metrics, as Consul;
	// /metrics and /v1/agent/version need no token.
	for _, c := range []struct {
		hdr, path string
		code      int
	}{
		{"", "/v1/agent/metrics?format=prometheus", 403},
		{"X-Consul-Token: web-secret", "/v1/agent/metrics", 403},
		{"X-Consul-Token: root-secret", "/v1/agent/metrics", 200},
		{"", "/metrics", 200},
		{"", "/v1/agent/version", 200},
	} {
		if code, _ := curl(t, "-H", c.hdr, base+c.path); code != c.code {
			t.Errorf("GET %s with %q: %d, want %d", c.path, c.hdr, code, c.code)
		}
	}

	// A reload needs agent:write, as in Consul.
	if code, _ := curl(t, "-X", "PUT", "-H", "X-Consul-Token: web-secret", base+"/v1/agent/reload"); code != 403 {
		t.Errorf("reload with the web token: %d, want 403", code)
	}
	if code, body := curl(t, "-X", "PUT", "-H", "X-Consul-Token: root-secret", base+"/v1/agent/reload"); code != 200 {
		t.Errorf("reload with the management token: %d %s", code, body)
	}

	// The CLI: -token, then $PIER_HTTP_TOKEN.
	_, errOut, rc := pier(t, "register", "-http-addr", a.addr, "-name", "web_b", "-port", "81")
	if rc == 0 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("pier register without a token: rc %d %q", rc, errOut)
	}
	if _, errOut, rc = pier(t, "register", "-http-addr", a.addr, "-token", "web-secret", "-name", "web_b", "-port", "81"); rc != 0 {
		t.Errorf("pier register -token: rc %d %q", rc, errOut)
	}
	t.Setenv("PIER_HTTP_TOKEN", "root-secret")
	if _, errOut, rc = pier(t, "deregister", "-http-addr", a.addr, "db"); rc != 0 {
		t.Errorf("pier deregister with $PIER_HTTP_TOKEN: rc %d %q", rc, errOut)
	}

	logs := a.logs()
	for _, s := range []string{"root-secret", "web-secret", "anon-secret"} {
		if strings.Contains(logs, s) {
			t.Errorf("the agent logged a token %q:\n%s", s, logs)
		}
	}
}

// TestACLBadConfig: a mistake in the acl stanza stops the agent.
func TestACLBadConfig(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		"unknown key": "acl:\n  enabled: true\n  default_polcy: deny\n",
		"bad level":   "acl:\n  enabled: true\n  tokens_list:\n    - secret: s\n      rules:\n        service_prefix:\n          \"\": admin\n",
		"bad policy":  "acl:\n  enabled: true\n  default_policy: maybe\n",
	} {
		cfg := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
		os.WriteFile(cfg, []byte(text), 0o600)
		_, errOut, rc := pier(t, "agent", "-dev", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0", "-config-file", cfg)
		if rc == 0 || !strings.Contains(errOut, "acl") {
			t.Errorf("%s: rc %d %q", name, rc, errOut)
		}
	}
}

// TestACLOpenAPIWarning: an API on a non-loopback address warns loudly only
// while ACLs are off.
func TestACLOpenAPIWarning(t *testing.T) {
	if l := startupLog(t, "-dev", "-client", "0.0.0.0"); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "SECURITY:") {
		t.Errorf("no loud warning with ACLs off:\n%s", l)
	}
	cfg := filepath.Join(t.TempDir(), "acl.yaml")
	os.WriteFile(cfg, []byte("acl: {enabled: true, default_policy: deny, tokens: {initial_management: m}}\n"), 0o600)
	if l := startupLog(t, "-dev", "-client", "0.0.0.0", "-config-file", cfg); strings.Contains(l, "SECURITY:") || !strings.Contains(l, "ACLs are on") {
		t.Errorf("loud warning with ACLs on:\n%s", l)
	}
}

// startupLog runs the agent until it says it is running (its API on a
// wildcard address, which startAgent's readiness line does not match) and
// answers its log up to there.
func startupLog(t *testing.T, args ...string) string {
	t.Helper()
	needBinary(t)
	argv := append([]string{"agent", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0", "-proxy-addr", "127.0.0.1:0"}, args...)
	cmd := exec.Command(pierBin, argv...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	var log strings.Builder
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), `msg="pier agent running"`) {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the agent did not start in 30s:\n%s", log.String())
	}
	return log.String()
}
