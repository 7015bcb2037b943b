package main

// The built agent against what Consul's clients and configs expect of a
// Consul agent (issue 20).

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
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

// TestNodeID: the node's ID is -node-id or node_id, else made once and kept
// in the data dir's node-id file, as Consul; a malformed one stops the agent
// with one line naming node_id. Nodes carry Consul's meta keys, and other
// nodes learn both through gossip.
func TestNodeID(t *testing.T) {
	dirA := t.TempDir()
	a := startAgent(t, "-node", "ida", "-data-dir", dirA, "-bind", "127.0.0.1")
	ca, err := consul.NewClient(&consul.Config{Address: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	nodes, _, err := ca.Catalog().Nodes(nil)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("Catalog().Nodes: %v %v", nodes, err)
	}
	kept, err := os.ReadFile(filepath.Join(dirA, "node-id"))
	if err != nil {
		t.Fatal(err)
	}
	idA := strings.TrimSpace(string(kept))
	if nodes[0].ID != idA || len(idA) != 36 {
		t.Errorf("node ID %q, data dir's node-id %q", nodes[0].ID, idA)
	}
	if v, ok := nodes[0].Meta["consul-version"]; !ok || v != version {
		t.Errorf("Meta consul-version = %q %v, want %q (Meta %v)", v, ok, version, nodes[0].Meta)
	}
	if v, ok := nodes[0].Meta["consul-network-segment"]; !ok || v != "" {
		t.Errorf("Meta consul-network-segment = %q %v, want \"\"", v, ok)
	}
	self, err := ca.Agent().Self()
	if err != nil || self["DebugConfig"]["NodeID"] != idA || self["Config"]["NodeID"] != idA {
		t.Errorf("agent/self NodeID: %v %v", self["DebugConfig"]["NodeID"], err)
	}
	// The agent's settings in DebugConfig, under Consul's names.
	dc := self["DebugConfig"]
	for k, want := range map[string]any{"BindAddr": "127.0.0.1", "DNSDomain": "consul.", "DataDir": dirA, "EncryptKey": "hidden", "ReconnectTimeoutLAN": "72h0m0s"} {
		if dc[k] != want {
			t.Errorf("DebugConfig.%s = %#v, want %#v", k, dc[k], want)
		}
	}
	if s, _ := dc["SerfAdvertiseAddrLAN"].(string); !strings.HasPrefix(s, "tcp://") || !strings.HasSuffix(a.gossip, s[strings.LastIndex(s, ":"):]) {
		t.Errorf("DebugConfig.SerfAdvertiseAddrLAN = %q, gossip on %s", s, a.gossip)
	}

	// Another node, with its ID given (in upper case, kept in lower as
	// Consul does), learns the first one's ID and meta through gossip.
	const idB = "0D4C1B5E-9F39-4D52-8E2A-6B0C3A9F1E77"
	b := startAgent(t, "-node", "idb", "-node-id", idB, "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	cb, err := consul.NewClient(&consul.Config{Address: b.addr})
	if err != nil {
		t.Fatal(err)
	}
	seen := watch(t, "http://"+b.addr+"/v1/catalog/nodes", 10*time.Second, func(ns []*consul.Node) bool {
		return len(ns) == 2 && ns[0].ID == idA && ns[0].Meta["consul-version"] == version
	})
	if seen[1].ID != strings.ToLower(idB) {
		t.Errorf("b's own ID %q, want %q", seen[1].ID, strings.ToLower(idB))
	}
	watch(t, "http://"+a.addr+"/v1/catalog/nodes", 10*time.Second, func(ns []*consul.Node) bool {
		return len(ns) == 2 && ns[1].ID == strings.ToLower(idB)
	})
	if n, _, err := cb.Catalog().Node("ida", nil); err != nil || n == nil || n.Node.ID != idA {
		t.Errorf("b's Catalog().Node(ida): %+v %v", n, err)
	}

	// A restart keeps the ID.
	a.stop(syscall.SIGTERM)
	a = startAgent(t, "-node", "ida", "-data-dir", dirA, "-bind", "127.0.0.1")
	if _, body := curl(t, "http://"+a.addr+"/v1/catalog/node/ida"); !strings.Contains(body, `"ID":"`+idA+`"`) {
		t.Errorf("after a restart: %s, want ID %s", body, idA)
	}

	// node_id from a config file.
	cfg := filepath.Join(t.TempDir(), "id.json")
	os.WriteFile(cfg, []byte(`{"node_id":"6f1d2c3b-4a59-4e68-9d7c-8b9a0f1e2d3c"}`), 0o600)
	c := startAgent(t, "-dev", "-node", "idc", "-config-file", cfg)
	if _, body := curl(t, "http://"+c.addr+"/v1/catalog/node/idc"); !strings.Contains(body, `"ID":"6f1d2c3b-4a59-4e68-9d7c-8b9a0f1e2d3c"`) {
		t.Errorf("node_id from a config file: %s", body)
	}

	// A malformed one stops the agent with one line naming node_id.
	os.WriteFile(cfg, []byte(`{"node_id":"not-a-uuid"}`), 0o600)
	for _, args := range [][]string{{"-node-id", "1234"}, {"-config-file", cfg}} {
		_, errOut, rc := pier(t, append([]string{"agent", "-dev", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0"}, args...)...)
		if rc == 0 || !strings.Contains(errOut, "node_id") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("agent %v: rc %d %q, want one line naming node_id", args, rc, errOut)
		}
	}
}

// members polls a's member list until cond holds.
func waitMembers(t *testing.T, c *consul.Client, what string, cond func(map[string]int) bool) {
	t.Helper()
	eventually.NoError(t, 30*time.Second, what, func() error {
		ms, err := c.Agent().Members(false)
		if err != nil {
			t.Fatalf("%s: Agent().Members: %v", what, err)
		}
		last := map[string]int{}
		for _, m := range ms {
			last[m.Name] = m.Status
		}
		if !cond(last) {
			return fmt.Errorf("members %v", last)
		}
		return nil
	})
}

// TestForceLeaveAliveAndPrune: force-leave of a live node is a no-op that
// answers 200, as Consul; with ?prune the node leaves the member list once
// it is gone, and a failed node at once.
func TestForceLeaveAliveAndPrune(t *testing.T) {
	const alive, failed = 1, 4 // Serf's numbering
	a := startAgent(t, "-node", "fla", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	b := startAgent(t, "-node", "flb", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	c := startAgent(t, "-node", "flc", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	ca, err := consul.NewClient(&consul.Config{Address: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	waitMembers(t, ca, "three alive", func(m map[string]int) bool { return len(m) == 3 && m["flb"] == alive && m["flc"] == alive })

	if err := ca.Agent().ForceLeave("flb"); err != nil {
		t.Errorf("force-leave of a live node: %v, want 200", err)
	}
	if err := ca.Agent().ForceLeavePrune("flb"); err != nil {
		t.Errorf("force-leave -prune of a live node: %v, want 200", err)
	}
	if err := ca.Agent().ForceLeave("fla"); err != nil {
		t.Errorf("force-leave of the agent itself: %v, want 200", err)
	}
	if err := ca.Agent().ForceLeave("nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("force-leave of an unknown node: %v, want 404", err)
	}
	if nodes, _, err := ca.Catalog().Nodes(nil); err != nil || len(nodes) != 3 {
		t.Errorf("catalog after force-leaving live nodes: %d nodes %v", len(nodes), err)
	}
	waitMembers(t, ca, "flb still alive", func(m map[string]int) bool { return m["flb"] == alive })

	// Once gone, the node marked for pruning leaves the list; the other
	// is listed as failed until it is force-left with ?prune.
	b.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Process.Signal(syscall.SIGKILL)
	waitMembers(t, ca, "flb pruned, flc failed", func(m map[string]int) bool {
		_, listed := m["flb"]
		return !listed && m["flc"] == failed
	})
	if err := ca.Agent().ForceLeavePrune("flc"); err != nil {
		t.Fatalf("force-leave -prune of a failed node: %v", err)
	}
	ms, err := ca.Agent().Members(false)
	if err != nil || len(ms) != 1 || ms[0].Name != "fla" {
		t.Errorf("members after pruning: %+v %v, want fla alone", ms, err)
	}
	if nodes, _, err := ca.Catalog().Nodes(nil); err != nil || len(nodes) != 1 {
		t.Errorf("catalog after pruning: %d nodes %v, want 1", len(nodes), err)
	}
}
