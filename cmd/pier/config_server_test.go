package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry/wan"
)

// The server settings come from Consul's keys and flags, -dev makes a
// server of one on a free port, and contradictions are refused with a line
// that names the setting.
func TestConfigServer(t *testing.T) {
	c, err := loadFiles(t, `
server: true
bootstrap_expect: 3
ports: {server: 9300, serf_wan: 9302}
autopilot: {cleanup_dead_servers: false, dead_server_timeout: 1m}
start_join_wan: [10.0.0.1]
retry_join_wan: ["10.0.0.2:8302"]
gossip_wan: {probe_interval: 2s, probe_timeout: 1s, suspicion_mult: 3}
`)
	if err != nil {
		t.Fatal(err)
	}
	want := serverSettings{On: true, BootstrapExpect: 3, Port: 9300, CleanupDeadServers: false, DeadServerTimeout: time.Minute,
		WANPort: 9302, JoinWAN: []string{"10.0.0.1"}, RetryJoinWAN: []string{"10.0.0.2:8302"},
		WANTimings: wan.Timings{ProbeInterval: 2 * time.Second, ProbeTimeout: time.Second, SuspicionMult: 3}}
	if !reflect.DeepEqual(c.Server, want) {
		t.Errorf("from the file: %+v, want %+v", c.Server, want)
	}
	if c, err := loadFiles(t, "raft_logstore: {backend: boltdb, wal: {segment_size_mb: 8}}\n"); err != nil || c.Server.LogStore != "boltdb" || c.Server.WALSegmentSize != 8<<20 {
		t.Errorf("raft_logstore: %+v %v", c.Server, err)
	}
	for file, msg := range map[string]string{
		"raft_logstore: {backend: bolt}\n":                  `raft_logstore.backend: "bolt" is not a log store backend`,
		"raft_logstore: {wal: {segment_size_mb: 0}}\n":      "raft_logstore.wal.segment_size_mb 0",
		"raft_logstore: {wal: {segment_size_mb: 2048}}\n":   "raft_logstore.wal.segment_size_mb 2048",
		"raft_logstore: {backend: wal, verification: {}}\n": "verification",
	} {
		if _, err := loadFiles(t, file); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v, want an error with %q", strings.TrimSpace(file), err, msg)
		}
	}
	if _, err := loadFiles(t, "bootstrap: true\nbootstrap_expect: 3\n"); err == nil || !strings.Contains(err.Error(), "bootstrap_expect") {
		t.Errorf("bootstrap with bootstrap_expect: %v, want an error naming both", err)
	}

	resolve := func(line string) (agentConfig, error) {
		f := newAgentFlags()
		if err := f.fs.Parse(strings.Fields(line)); err != nil {
			return agentConfig{}, err
		}
		return f.resolve()
	}
	c, err = resolve("-dev")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Server.On || c.Server.BootstrapExpect != 1 || c.Server.Port != 0 || c.Server.WANPort != 0 {
		t.Errorf("-dev: %+v, want a server of one on any free ports", c.Server)
	}
	if c, _ = resolve("-server -bootstrap -data-dir /tmp/x"); c.Server.BootstrapExpect != 1 || c.Server.Port != 8300 || c.Server.WANPort != 8302 {
		t.Errorf("-server -bootstrap: %+v, want bootstrap_expect 1 on 8300, WAN on 8302", c.Server)
	}
	for line, msg := range map[string]string{
		"-bootstrap-expect 3 -data-dir /tmp/x":                    "needs -server",
		"-server -bootstrap -bootstrap-expect 3 -data-dir /tmp/x": "cannot both be set",
		"-server -server-port 70000 -data-dir /tmp/x":             "-server-port 70000",
		"-server -bootstrap-expect -1 -data-dir /tmp/x":           "must not be negative",
		"-join-wan 10.0.0.1 -data-dir /tmp/x":                     "need -server",
		"-server -serf-wan-port 70000 -data-dir /tmp/x":           "-serf-wan-port 70000",
	} {
		if _, err := resolve(line); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("pier agent %s: %v, want an error with %q", line, err, msg)
		}
	}
	if c, _ = resolve("-server -bootstrap-expect 4 -data-dir /tmp/x"); len(c.Warnings) == 0 {
		t.Error("bootstrap_expect 4: want a warning about an even number of servers")
	}
}
