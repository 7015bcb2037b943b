package api_test

import (
	"net/http"
	"os"
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry/api"
)

func getStatus(t *testing.T, url, token string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// consul info prints Self()'s Stats, section by section; consul debug
// refuses to start without DebugConfig.EnableDebug.
func TestAgentSelfStatsAndDebugConfig(t *testing.T) {
	a := startAgentWith(t, nil)
	err := a.client.Agent().ServiceRegister(&consul.AgentServiceRegistration{
		ID: "web1", Name: "web", Port: 80,
		Check: &consul.AgentServiceCheck{TTL: "30s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	self, err := a.client.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	stats, ok := self["Stats"]
	if !ok {
		t.Fatal("no Stats in /v1/agent/self")
	}
	want := map[string]map[string]string{
		"agent":    {"services": "1", "checks": "1", "check_ttls": "1", "check_monitors": "0"},
		"build":    {"version": "test"},
		"runtime":  {"os": "linux", "goroutines": ""},
		"serf_lan": {"members": "1", "failed": "0", "left": "0", "encrypted": "false"},
	}
	for sec, keys := range want {
		m, ok := stats[sec].(map[string]any)
		if !ok {
			t.Errorf("Stats[%q] = %#v, want an object", sec, stats[sec])
			continue
		}
		for k, v := range keys {
			got, ok := m[k].(string)
			if !ok || v != "" && got != v {
				t.Errorf("Stats[%q][%q] = %#v, want %q", sec, k, m[k], v)
			}
		}
	}
	dc := self["DebugConfig"]
	if dc["EnableDebug"] != false || dc["ACLsEnabled"] != false {
		t.Errorf("DebugConfig = %v, want EnableDebug and ACLsEnabled false", dc)
	}

	on := startAPIAgent(t, func(c *api.Config) {
		c.EnableDebug = true
		c.ACL = mgmtACL()
	})
	on.client.AddHeader("X-Consul-Token", mgmtTok)
	self, err = on.client.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	if dc := self["DebugConfig"]; dc["EnableDebug"] != true || dc["ACLsEnabled"] != true {
		t.Errorf("with enable_debug and ACLs: DebugConfig = %v", dc)
	}
}

func TestAgentHost(t *testing.T) {
	a := startAgentWith(t, nil)
	h, err := a.client.Agent().Host()
	if err != nil {
		t.Fatal(err)
	}
	name, _ := os.Hostname()
	hst, _ := h["Host"].(map[string]any)
	if hst["hostname"] != name || hst["os"] != "linux" {
		t.Errorf("Host = %v, want hostname %q and os linux", hst, name)
	}
	mem, _ := h["Memory"].(map[string]any)
	if total, _ := mem["total"].(float64); total <= 0 {
		t.Errorf("Memory = %v, want a total", mem)
	}
	disk, _ := h["Disk"].(map[string]any)
	if disk["path"] != "/" {
		t.Errorf("Disk = %v, want the usage of /", disk)
	}
	if cpus, _ := h["CPU"].([]any); len(cpus) == 0 {
		t.Errorf("CPU = %v, want one entry per CPU", h["CPU"])
	}
	if ct, _ := h["CollectionTime"].(float64); ct <= 0 {
		t.Errorf("CollectionTime = %v", h["CollectionTime"])
	}
}

// /v1/agent/host and Go's profiles need operator:read, as in Consul.
func TestAgentHostAndPprofACL(t *testing.T) {
	const opTok = "22222222-operator-read"
	a := startAPIAgent(t, func(c *api.Config) {
		c.ACL = mgmtACL()
		c.ACL.Tokens = []api.ACLToken{{Secret: opTok, Description: "operator", Rules: api.ACLRules{Operator: "read"}}}
	})
	for _, path := range []string{"/v1/agent/host", "/debug/pprof/"} {
		if code := getStatus(t, a.base+path, ""); code != http.StatusForbidden {
			t.Errorf("anonymous GET %s: %d, want 403", path, code)
		}
		if code := getStatus(t, a.base+path, opTok); code != http.StatusOK {
			t.Errorf("operator:read GET %s: %d, want 200", path, code)
		}
	}
}

// Without ACLs, the profiles are served only with enable_debug.
func TestPprofNeedsEnableDebug(t *testing.T) {
	off := startAgentWith(t, nil)
	if code := getStatus(t, off.base+"/debug/pprof/", ""); code != http.StatusNotFound {
		t.Errorf("without enable_debug: %d, want 404", code)
	}
	on := startAPIAgent(t, func(c *api.Config) { c.EnableDebug = true })
	if code := getStatus(t, on.base+"/debug/pprof/goroutine?debug=1", ""); code != http.StatusOK {
		t.Errorf("with enable_debug: %d, want 200", code)
	}
}

// statsOf answers /v1/agent/self's Stats through the consul/api client.
func statsOf(t *testing.T, c *consul.Client) map[string]map[string]any {
	t.Helper()
	self, err := c.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]any{}
	for sec, v := range self["Stats"] {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("Stats[%q] = %#v, want an object", sec, v)
		}
		out[sec] = m
	}
	return out
}

// consul info shows a server's raft and consul sections, and a client's
// consul section with the servers it knows, under Consul's key names.
func TestAgentSelfStatsRaftAndConsul(t *testing.T) {
	servers, client := startGroup(t)
	lead := leaderOf(servers)
	st := statsOf(t, lead.client)
	want := map[string]string{"server": "true", "leader": "true", "leader_addr": lead.port,
		"bootstrap": "false", "known_datacenters": "1", "acl": "disabled"}
	for k, v := range want {
		if st["consul"][k] != v {
			t.Errorf("leader's consul[%q] = %#v, want %q", k, st["consul"][k], v)
		}
	}
	if st["raft"]["state"] != "Leader" || st["raft"]["num_peers"] != "2" {
		t.Errorf("leader's raft = %v, want state Leader and 2 peers", st["raft"])
	}
	for _, k := range []string{"term", "last_log_index", "last_log_term", "commit_index", "applied_index", "fsm_pending",
		"last_snapshot_index", "last_snapshot_term", "last_contact", "latest_configuration", "latest_configuration_index", "protocol_version"} {
		if _, ok := st["raft"][k].(string); !ok {
			t.Errorf("leader's raft has no %q: %v", k, st["raft"])
		}
	}
	for _, s := range servers {
		if s == lead {
			continue
		}
		fst := statsOf(t, s.client)
		if fst["consul"]["leader"] != "false" || fst["raft"]["state"] != "Follower" || fst["consul"]["leader_addr"] != lead.port {
			t.Errorf("follower %s: consul %v, raft state %v", s.name, fst["consul"], fst["raft"]["state"])
		}
	}

	cst := statsOf(t, client.client)
	if cst["consul"]["server"] != "false" || cst["consul"]["known_servers"] != "3" || cst["consul"]["acl"] != "disabled" {
		t.Errorf("client's consul = %v, want server false and 3 known servers", cst["consul"])
	}
	if _, ok := cst["raft"]; ok {
		t.Errorf("a client has a raft section: %v", cst["raft"])
	}
	self, err := client.client.Agent().Self()
	if err != nil {
		t.Fatal(err)
	}
	if self["Config"]["Server"] != false || self["DebugConfig"]["ServerMode"] != false {
		t.Errorf("a client's Config.Server = %v, DebugConfig.ServerMode = %v; want false", self["Config"]["Server"], self["DebugConfig"]["ServerMode"])
	}
}
