package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// enable_debug and acl.enable_token_persistence from a config file, through
// the built binary: the profiles are served, consul debug's keys are in
// /v1/agent/self, and a default token set through the API survives a
// restart.
func TestAgentDebugAndTokenPersistence(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.json")
	os.WriteFile(cfg, []byte(`{"enable_debug": true, "acl": {"enabled": true, "default_policy": "deny",
		"enable_token_persistence": true, "tokens": {"initial_management": "root"}}}`), 0o600)
	data := filepath.Join(dir, "data")
	a := startAgent(t, "-data-dir", data, "-config-file", cfg, "-node", "n1")
	code, body := curl(t, "-H", "X-Consul-Token: root", "http://"+a.addr+"/v1/agent/self")
	if code != 200 || !strings.Contains(body, `"EnableDebug":true`) || !strings.Contains(body, `"ACLsEnabled":true`) {
		t.Fatalf("agent/self: %d %s", code, body)
	}
	if code, _ := curl(t, "-H", "X-Consul-Token: root", "http://"+a.addr+"/debug/pprof/cmdline"); code != 200 {
		t.Errorf("pprof with enable_debug: %d", code)
	}
	if code, _ := curl(t, "http://"+a.addr+"/v1/agent/self"); code != 403 {
		t.Fatalf("anonymous agent/self before a default token: %d, want 403", code)
	}
	if code, body := curl(t, "-X", "PUT", "-H", "X-Consul-Token: root", "--data", `{"Token":"root"}`, "http://"+a.addr+"/v1/agent/token/default"); code != 200 {
		t.Fatalf("PUT token/default: %d %s", code, body)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "acl-tokens.json")); err != nil {
		t.Fatalf("acl-tokens.json: %v", err)
	}
	b := startAgent(t, "-data-dir", data, "-config-file", cfg, "-node", "n1")
	if code, body := curl(t, "http://"+b.addr+"/v1/agent/self"); code != 200 {
		t.Errorf("anonymous agent/self after a restart: %d %s; the persisted default token was not loaded", code, body)
	}
}

// What `consul debug` reads, in its order, from a -dev agent: the
// DebugConfig keys, the host facts, a metrics summary from the stream, and
// the log stream.
func TestConsulDebugEndpoints(t *testing.T) {
	a := startAgent(t, "-dev")
	c, err := consul.NewClient(&consul.Config{Address: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	self, err := c.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := self["DebugConfig"]["EnableDebug"]; !ok {
		t.Fatalf("agent response did not contain EnableDebug key: %v", self["DebugConfig"])
	}
	if self["Stats"]["serf_lan"] == nil || self["Stats"]["runtime"] == nil {
		t.Errorf("Stats = %v, want serf_lan and runtime for consul info", self["Stats"])
	}
	host, err := c.Agent().Host()
	if err != nil || host["Host"] == nil || host["Memory"] == nil {
		t.Errorf("Host() = %v, %v", host, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	body, err := c.Agent().MetricsStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var m consul.MetricsInfo
	if err := json.NewDecoder(body).Decode(&m); err != nil || len(m.Gauges) == 0 {
		t.Errorf("first metrics summary: %+v, %v", m, err)
	}
	body.Close()
	stop := make(chan struct{})
	defer close(stop)
	if _, err := c.Agent().Monitor("info", stop, nil); err != nil {
		t.Errorf("Monitor: %v", err)
	}
}
