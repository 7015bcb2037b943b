package api_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

// startAutopilotGroup is three servers with a 45 s dead-server cleanup,
// each told by "gossip" (Reconcile) that all three are alive, and a client.
func startAutopilotGroup(t *testing.T, cleanup time.Duration) (servers []*raftAgent, client *raftAgent) {
	t.Helper()
	var ports []string
	for i := range 3 {
		servers = append(servers, startRaftAgentTuned(t, fmt.Sprintf("s%d", i), true, nil, nil, nil,
			func(c *raft.Config) { c.CleanupDeadServers = cleanup }))
		ports = append(ports, servers[i].port)
	}
	var members []raft.Server
	var peers []raft.Peer
	for _, s := range servers {
		members = append(members, raft.Server{ID: s.name, Address: s.port, Voter: true})
		peers = append(peers, raft.Peer{ID: s.name, Name: s.name, Addr: s.port, Status: registry.MemberAlive})
	}
	for i, s := range servers {
		if err := s.node.Bootstrap(members); err != nil {
			t.Fatal(err)
		}
		s.node.Reconcile(peers[i], peers)
	}
	client = startRaftAgent(t, "c0", false, func() []string { return ports }, nil)
	eventually.True(t, 10*time.Second, "a leader", func() bool { return leaderOf(servers) != nil })
	return servers, client
}

// TestAutopilotOperator: consul/api's Operator() autopilot calls, made on
// a client agent, answer the leader's view.
func TestAutopilotOperator(t *testing.T) {
	servers, client := startAutopilotGroup(t, 45*time.Second)
	op := client.client.Operator()

	conf, err := op.AutopilotGetConfiguration(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !conf.CleanupDeadServers || conf.MaxTrailingLogs != 250 || conf.LastContactThreshold.Duration() != 200*time.Millisecond ||
		conf.ServerStabilizationTime.Duration() != 10*time.Second || conf.MinQuorum != 0 {
		t.Errorf("configuration %+v", *conf)
	}
	resp, err := http.Get(client.base + "/v1/operator/autopilot/configuration")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"DeadServerTimeout":"45s"`) {
		t.Errorf("configuration lacks pier's dead-server timeout: %s", b)
	}

	// What set-config sends without flags changes nothing and is taken;
	// a change is refused with a 400 that names the field.
	if err := op.AutopilotSetConfiguration(conf, nil); err != nil {
		t.Errorf("unchanged set-config: %v", err)
	}
	if ok, err := op.AutopilotCASConfiguration(conf, nil); err != nil || !ok {
		t.Errorf("unchanged CAS set-config: %v, %v", ok, err)
	}
	off := *conf
	off.CleanupDeadServers = false
	if err := op.AutopilotSetConfiguration(&off, nil); err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "CleanupDeadServers") {
		t.Errorf("turning cleanup off: %v", err)
	}
	zone := *conf
	zone.RedundancyZoneTag = "az"
	if err := op.AutopilotSetConfiguration(&zone, nil); err == nil || !strings.Contains(err.Error(), "RedundancyZoneTag") {
		t.Errorf("setting a zone tag: %v", err)
	}

	// Health: the leader polls the others at each reconcile pass.
	var health *consul.OperatorHealthReply
	eventually.True(t, 30*time.Second, "three healthy servers", func() bool {
		var peers []raft.Peer
		for _, s := range servers {
			peers = append(peers, raft.Peer{ID: s.name, Name: s.name, Addr: s.port, Status: registry.MemberAlive})
		}
		for i, s := range servers { // the leader polls at its next pass
			s.node.Reconcile(peers[i], peers)
		}
		health, err = op.AutopilotServerHealth(nil)
		return err == nil && health.Healthy && len(health.Servers) == 3
	})
	leader := leaderOf(servers)
	if health.FailureTolerance != 1 {
		t.Errorf("failure tolerance %d, want 1", health.FailureTolerance)
	}
	for _, sh := range health.Servers {
		if sh.Name != sh.ID || !sh.Voter || sh.LastIndex == 0 || sh.LastTerm == 0 || sh.SerfStatus != "alive" || sh.Leader != (sh.ID == leader.name) {
			t.Errorf("server %+v", sh)
		}
	}

	// ?stale on a client still reaches the leader: only it knows the others.
	if h, err := op.AutopilotServerHealth(&consul.QueryOptions{AllowStale: true}); err != nil || !h.Healthy {
		t.Errorf("stale health: %+v, %v", h, err)
	}
	state, err := op.AutopilotState(nil)
	if err != nil {
		t.Fatal(err)
	}
	if state.Leader != leader.name || len(state.Voters) != 3 || len(state.Servers) != 3 || !state.Healthy ||
		state.FailureTolerance != 1 || state.OptimisticFailureTolerance != 1 {
		t.Errorf("state %+v", *state)
	}
	for id, sv := range state.Servers {
		want := consul.AutopilotServerVoter
		if id == leader.name {
			want = consul.AutopilotServerLeader
		}
		if sv.Status != want || sv.NodeStatus != "alive" || !sv.Healthy {
			t.Errorf("state of %s: %+v", id, sv)
		}
	}

	// A server gossip sees failed is unhealthy, and the group answers 429
	// to the health check, which the client takes.
	// Every server but the failed one is told so, not only the leader: on a
	// loaded machine leadership can move before the check below (seen in
	// CI), and a new leader would not have heard it.
	var peers []raft.Peer
	failedName := ""
	for _, s := range servers {
		p := raft.Peer{ID: s.name, Name: s.name, Addr: s.port, Status: registry.MemberAlive}
		if s != leader && failedName == "" {
			p.Status, failedName = registry.MemberFailed, s.name
		}
		peers = append(peers, p)
	}
	for i, s := range servers {
		if s.name != failedName {
			s.node.Reconcile(peers[i], peers)
		}
	}
	eventually.True(t, 30*time.Second, "an unhealthy group", func() bool {
		h, err := op.AutopilotServerHealth(nil)
		return err == nil && !h.Healthy && h.FailureTolerance == 0
	})
}

// TestAutopilotACL: operator:read reads autopilot, operator:write sets it.
func TestAutopilotACL(t *testing.T) {
	const mgmt, ro = "mgmt-secret", "ro-secret"
	rules, err := acl.ParseRules(`operator = "read"`)
	if err != nil {
		t.Fatal(err)
	}
	a := startRaftAgentTuned(t, "s0", true, nil, func(c *api.Config) {
		c.ACL = api.ACLConfig{Enabled: true, DefaultPolicy: "deny", InitialManagement: mgmt,
			Tokens: []acl.Token{{Secret: ro, Description: "ro", Rules: rules}}}
	}, nil, nil)
	if err := a.node.Bootstrap([]raft.Server{{ID: "s0", Address: a.port, Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "s0 leads", a.node.IsLeader)
	client := func(tok string) *consul.Operator {
		c, err := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(a.base, "http://"), Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		return c.Operator()
	}
	if _, err := client("").AutopilotGetConfiguration(nil); !isDenied(err) {
		t.Errorf("anonymous get-config: %v", err)
	}
	conf, err := client(ro).AutopilotGetConfiguration(nil)
	if err != nil {
		t.Fatal(err)
	}
	if conf.CleanupDeadServers {
		t.Error("cleanup is off in this server's configuration")
	}
	if _, err := client(ro).AutopilotState(nil); err != nil {
		t.Errorf("operator:read state: %v", err)
	}
	if err := client(ro).AutopilotSetConfiguration(conf, nil); !isDenied(err) {
		t.Errorf("operator:read set-config: %v", err)
	}
	if err := client(mgmt).AutopilotSetConfiguration(conf, nil); err != nil {
		t.Errorf("management set-config: %v", err)
	}
}
