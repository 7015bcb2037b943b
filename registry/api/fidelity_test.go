package api_test

// Answers that Consul's own clients expect of a Consul agent (issue 20),
// through the consul/api client where it has a call.

import (
	"net/http"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"
)

// A Consul agent's local checks never hold serfHealth: it is the cluster's
// view of the node and lives in the catalog only.
func TestAgentChecksWithoutSerfHealth(t *testing.T) {
	a := startAgent(t)
	ag := a.client.Agent()
	wantNone := func(when string) {
		t.Helper()
		checks, err := ag.Checks()
		if err != nil {
			t.Fatalf("%s: Agent().Checks: %v", when, err)
		}
		if len(checks) != 0 {
			t.Errorf("%s: Agent().Checks() = %v, want none", when, checks)
		}
	}
	wantNone("nothing registered")
	if err := ag.EnableNodeMaintenance("test"); err != nil {
		t.Fatal(err)
	}
	if err := ag.DisableNodeMaintenance(); err != nil {
		t.Fatal(err)
	}
	wantNone("after node maintenance off")
	reg := &consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80,
		Check: &consul.AgentServiceCheck{TTL: "30s"}}
	mustRegister(t, a, reg)
	if err := ag.EnableServiceMaintenance("web1", "deploy"); err != nil {
		t.Fatal(err)
	}
	if err := ag.DisableServiceMaintenance("web1"); err != nil {
		t.Fatal(err)
	}
	checks, err := ag.Checks()
	if err != nil || len(checks) != 1 || checks["service:web1"] == nil {
		t.Errorf("after service maintenance off: %v %v, want only service:web1", checks, err)
	}
	reg.Check = nil
	if err := ag.ServiceRegisterOpts(reg, consul.ServiceRegisterOpts{ReplaceExistingChecks: true}); err != nil {
		t.Fatal(err)
	}
	wantNone("after replace-existing-checks without checks")
	// The catalog keeps it.
	hc, _, err := a.client.Health().Node("node1", nil)
	if err != nil || len(hc) != 1 || hc[0].CheckID != "serfHealth" {
		t.Errorf("Health().Node: %v %v, want serfHealth", hc, err)
	}
}

// ?dc= naming a datacenter this agent cannot reach is Consul's 500.
func TestStatusOtherDatacenter(t *testing.T) {
	a := startAgent(t)
	q := &consul.QueryOptions{Datacenter: "nope"}
	if _, err := a.client.Status().LeaderWithQueryOptions(q); err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "No path to datacenter") {
		t.Errorf("Status().Leader(dc=nope): %v, want 500 No path to datacenter", err)
	}
	if _, err := a.client.Status().PeersWithQueryOptions(q); err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "No path to datacenter") {
		t.Errorf("Status().Peers(dc=nope): %v, want 500 No path to datacenter", err)
	}
	if _, err := a.client.Status().LeaderWithQueryOptions(&consul.QueryOptions{Datacenter: "dc1"}); err != nil {
		t.Errorf("Status().Leader(dc=dc1): %v", err)
	}
}

// /v1/agent/self carries DebugConfig with Consul's field names.
func TestAgentSelfDebugConfig(t *testing.T) {
	a := startAgent(t)
	self, err := a.client.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	dc := self["DebugConfig"]
	if dc == nil {
		t.Fatalf("no DebugConfig in %v", self)
	}
	cfg := a.reg.Config()
	for k, want := range map[string]any{
		"SerfAdvertiseAddrLAN": "tcp://127.0.0.1:8301",
		"NodeID":               cfg.NodeID,
		"NodeName":             "node1",
		"Datacenter":           "dc1",
		"AdvertiseAddrLAN":     "127.0.0.1",
		"SerfPortLAN":          float64(8301),
	} {
		if got := dc[k]; got != want {
			t.Errorf("DebugConfig.%s = %#v, want %#v", k, got, want)
		}
	}
}

// The Service of each /v1/health/service entry carries the catalog's
// indexes, as Consul's does.
func TestHealthServiceIndexes(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	entries, meta, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("Health().Service: %v %v", entries, err)
	}
	s := entries[0].Service
	if s.CreateIndex == 0 || s.ModifyIndex < s.CreateIndex || s.ModifyIndex > meta.LastIndex {
		t.Errorf("Service CreateIndex %d ModifyIndex %d (answer's index %d)", s.CreateIndex, s.ModifyIndex, meta.LastIndex)
	}
	reg := redisRegistration()
	reg.Port = 8001
	mustRegister(t, a, reg)
	entries, _, err = a.client.Health().Service("redis", "", false, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("Health().Service: %v %v", entries, err)
	}
	if e := entries[0].Service; e.CreateIndex != s.CreateIndex || e.ModifyIndex <= s.ModifyIndex {
		t.Errorf("after an update: CreateIndex %d ModifyIndex %d, want %d and more than %d", e.CreateIndex, e.ModifyIndex, s.CreateIndex, s.ModifyIndex)
	}
	// The agent's own view has none, as Consul's.
	code, body := do(t, a, http.MethodGet, "/v1/agent/service/redis1", "")
	if code != 200 || strings.Contains(body, "CreateIndex") {
		t.Errorf("agent/service: %d %s", code, body)
	}
}
