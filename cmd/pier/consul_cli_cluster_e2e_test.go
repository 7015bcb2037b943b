package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// selfStats answers /v1/agent/self's Stats through the consul/api client.
func selfStats(c *consul.Client) map[string]map[string]any {
	self, err := c.Agent().Self()
	if err != nil {
		return nil
	}
	out := map[string]map[string]any{}
	for sec, v := range self["Stats"] {
		if m, ok := v.(map[string]any); ok {
			out[sec] = m
		}
	}
	return out
}

// wanCoordinateOf answers whether /v1/coordinate/datacenters holds node's
// coordinate under dc, named as Consul names it there (without .dc).
func wanCoordinateOf(c *consul.Client, dc, node string) bool {
	dcs, err := c.Coordinate().Datacenters()
	if err != nil {
		return false
	}
	for _, d := range dcs {
		for _, e := range d.Coordinates {
			if d.Datacenter == dc && e.Node == node && e.Coord != nil {
				return true
			}
		}
	}
	return false
}

// Two datacenters (dc1: a server and a client; dc2: a server) as the
// consul command sees them: first what it reads, through the consul/api
// client, then (with CONSUL_BIN) the commands of issue 25 that need
// servers and datacenters, run as a user would.
func TestConsulCLIServersAndDatacenters(t *testing.T) {
	needBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "debug.json")
	os.WriteFile(cfg, []byte(`{"enable_debug": true}`), 0o600)
	dc1 := startDatacenter(t, "dc1", 1, "", "-config-file", cfg)
	startDatacenter(t, "dc2", 0, dc1.server.wan)
	server, client := apiClient(t, dc1.server.addr), apiClient(t, dc1.clients[0].addr)
	eventually.True(t, 30*time.Second, "dc1's server leads and knows both datacenters and its client", func() bool {
		st := selfStats(server)
		return slices.Equal(datacentersOf(server), []string{"dc1", "dc2"}) && st["consul"]["known_datacenters"] == "2" && st["consul"]["leader"] == "true" &&
			st["serf_wan"]["members"] == "2" && st["serf_lan"]["members"] == "2"
	})
	st := selfStats(server)
	for k, v := range map[string]string{"server": "true", "leader": "true", "bootstrap": "true", "acl": "disabled"} {
		if st["consul"][k] != v {
			t.Errorf("server's consul[%q] = %#v, want %q", k, st["consul"][k], v)
		}
	}
	if st["raft"]["state"] != "Leader" || st["raft"]["num_peers"] != "0" {
		t.Errorf("server's raft = %v", st["raft"])
	}
	eventually.True(t, 20*time.Second, "the client knows its server", func() bool {
		st := selfStats(client)
		return st["consul"]["server"] == "false" && st["consul"]["known_servers"] == "1" && st["raft"] == nil && st["serf_wan"] == nil
	})
	// consul rtt -wan node.dc looks the node up without its .dc.
	eventually.True(t, 30*time.Second, "WAN coordinates of both servers", func() bool {
		return wanCoordinateOf(client, "dc1", "s-dc1") && wanCoordinateOf(client, "dc2", "s-dc2")
	})

	bin := consulCLI(t)
	run := func(addr string, args ...string) (string, int) {
		t.Helper()
		return consulRun(t, bin, dir, addr, args...)
	}
	sAddr, cAddr := dc1.server.addr, dc1.clients[0].addr
	expect := func(what string, out string, code, wantCode int, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if code != wantCode || !strings.Contains(out, w) {
				t.Errorf("consul %s: exit %d (want %d), no %q in:\n%s", what, code, wantCode, w, out)
				return
			}
		}
	}
	out, code := run(sAddr, "info")
	expect("info on a server", out, code, 0, "consul:", "known_datacenters = 2", "raft:", "state = Leader", "serf_wan:", "serf_lan:")
	out, code = run(cAddr, "info")
	expect("info on a client", out, code, 0, "known_servers = 1", "server = false")
	if strings.Contains(out, "raft:") {
		t.Errorf("consul info on a client shows raft:\n%s", out)
	}
	out, code = run(cAddr, "members")
	expect("members", out, code, 0, "s-dc1", "c1-dc1", "server", "client")
	out, code = run(sAddr, "members", "-wan")
	expect("members -wan", out, code, 0, "s-dc1.dc1", "s-dc2.dc2")
	out, code = run(cAddr, "catalog datacenters")
	expect("catalog datacenters", out, code, 0, "dc1\ndc2")
	out, code = run(cAddr, "catalog nodes", "-near", "s-dc1")
	expect("catalog nodes -near", out, code, 0, "s-dc1", "c1-dc1")
	eventually.True(t, 30*time.Second, "consul rtt and rtt -wan estimate", func() bool {
		lan, c1 := run(cAddr, "rtt", "s-dc1", "c1-dc1")
		wan, c2 := run(cAddr, "rtt", "-wan", "s-dc1.dc1", "s-dc2.dc2")
		return c1 == 0 && strings.Contains(lan, "LAN coordinates") && c2 == 0 && strings.Contains(wan, "WAN coordinates")
	})

	out, code = run(cAddr, "kv put", "-datacenter", "dc2", "where", "dc2")
	expect("kv put -datacenter", out, code, 0, "Success!")
	out, code = run(cAddr, "kv get", "-datacenter", "dc2", "where")
	expect("kv get -datacenter", out, code, 0, "dc2")
	out, code = run(cAddr, "kv get", "where")
	expect("kv get in dc1", out, code, 1, "No key exists")
	out, code = run(cAddr, "lock", "locks/deploy", "echo", "held")
	expect("lock", out, code, 0, "held")
	out, code = run(cAddr, "lock", "-n", "2", "locks/sem", "echo", "sem-held")
	expect("lock -n 2", out, code, 0, "sem-held")

	out, code = run(cAddr, "snapshot save", "backup.snap")
	expect("snapshot save", out, code, 0, "Saved and verified snapshot")
	out, code = run(cAddr, "snapshot restore", "backup.snap")
	expect("snapshot restore", out, code, 0, "Restored snapshot")
	// inspect decodes state.bin as Consul's own FSM records, which pier's
	// (JSON) is not; the README says so.
	insp := exec.Command(bin, "snapshot", "inspect", "backup.snap")
	insp.Dir = dir
	b, err := insp.CombinedOutput()
	out, code = string(b), insp.ProcessState.ExitCode()
	expect("snapshot inspect", out, code, 1, "Error extracting snapshot data")

	out, code = run(cAddr, "operator raft list-peers")
	expect("operator raft list-peers", out, code, 0, "s-dc1", "leader")
	out, code = run(cAddr, "operator raft list-peers", "-datacenter", "dc2")
	expect("operator raft list-peers -datacenter", out, code, 0, "s-dc2", "leader")
	out, code = run(cAddr, "operator raft remove-peer", "-address", "127.0.0.1:1")
	expect("operator raft remove-peer", out, code, 1, "was not found in the Raft configuration")
	out, code = run(cAddr, "operator raft transfer-leader")
	expect("operator raft transfer-leader in a group of one", out, code, 1, "Error transfering leadership")
	out, code = run(cAddr, "operator autopilot get-config")
	expect("operator autopilot get-config", out, code, 0, "CleanupDeadServers = true")
	out, code = run(cAddr, "operator autopilot state")
	expect("operator autopilot state", out, code, 0, "Healthy:", "s-dc1")

	// consul watch with a handler runs it for every change; without one it
	// prints the first answer and stops, as Consul's.
	watch := exec.Command(bin, "watch", "-http-addr="+cAddr, "-type=event", "-name=deploy", "cat")
	awaitLine(t, streamLines(t, watch), "consul watch -type=event", 30*time.Second, time.Second,
		func(l string) bool { return strings.Contains(l, `"Name":"deploy"`) },
		func() {
			if out, code := run(sAddr, "event", "-name=deploy", "v2"); code != 0 {
				t.Errorf("consul event: exit %d:\n%s", code, out)
			}
		})

	// On a server, consul debug's static capture holds the Raft peers.
	out, code = run(sAddr, "debug", "-duration=11s", "-interval=5s", "-output=srv")
	if code != 0 || !strings.Contains(out, "Saved debug archive") {
		t.Errorf("consul debug on a server: exit %d:\n%s", code, out)
	}
	var tar []byte
	tar, err = exec.Command("tar", "tzf", filepath.Join(dir, "srv.tar.gz")).CombinedOutput()
	for _, want := range []string{"listpeers.json", "members.json", "agent.json", "metrics.json", "profile.prof"} {
		if err != nil || !strings.Contains(string(tar), want) {
			t.Errorf("debug archive lacks %s: %v\n%s", want, err, tar)
		}
	}

	// consul acl bootstrap, once per cluster.
	acl := filepath.Join(dir, "acl.json")
	os.WriteFile(acl, []byte(`{"acl": {"enabled": true, "default_policy": "deny"}}`), 0o600)
	a := startAgent(t, "-dev", "-config-file", acl)
	out, code = run(a.addr, "acl bootstrap")
	expect("acl bootstrap", out, code, 0, "SecretID:", "global-management")
	out, code = run(a.addr, "acl bootstrap")
	expect("acl bootstrap again", out, code, 1, "ACL bootstrap no longer allowed")
}
