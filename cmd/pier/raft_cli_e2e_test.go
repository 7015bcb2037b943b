package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// The built binary against `pier agent -dev` (a server of one): list-peers
// shows the agent leading, pier lock runs a command with the lock held and
// exits with its code, snapshot save and restore bring a key back, and an
// external service registered with consul/api's Catalog().Register shows
// in the agent's catalog.
func TestRaftSubcommandsAgainstDevAgent(t *testing.T) {
	a := startAgent(t, "-dev", "-proxy-addr", "127.0.0.1:0")
	out, errOut, code := pier(t, "operator", "raft", "list-peers", "-http-addr", a.addr)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !strings.Contains(lines[1], "leader") || !strings.HasPrefix(lines[0], "Node") {
		t.Fatalf("list-peers: exit %d\n%s%s", code, out, errOut)
	}

	out, errOut, code = pier(t, "lock", "-http-addr", a.addr, "app/deploy", "echo held=$CONSUL_LOCK_HELD; exit 3")
	if code != 3 || strings.TrimSpace(out) != "held=true" {
		t.Fatalf("lock: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	c, err := consul.NewClient(&consul.Config{Address: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.KV().Put(&consul.KVPair{Key: "app/config", Value: []byte("v1")}, nil); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "dev.snap")
	if out, errOut, code := pier(t, "snapshot", "save", "-http-addr", a.addr, file); code != 0 || !strings.HasPrefix(out, "Saved and verified snapshot to index ") {
		t.Fatalf("snapshot save: exit %d %q %q", code, out, errOut)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KV().Put(&consul.KVPair{Key: "app/config", Value: []byte("v2")}, nil); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := pier(t, "snapshot", "restore", "-http-addr", a.addr, file); code != 0 || out != "Restored snapshot\n" {
		t.Fatalf("snapshot restore: exit %d %q %q", code, out, errOut)
	}
	if p, _, err := c.KV().Get("app/config", nil); err != nil || p == nil || string(p.Value) != "v1" {
		t.Fatalf("app/config after restore: %+v %v", p, err)
	}

	reg := &consul.CatalogRegistration{Node: "ext-db", Address: "10.9.0.1", Service: &consul.AgentService{Service: "db", Port: 5432}}
	if _, err := c.Catalog().Register(reg, nil); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "db in the agent's catalog", func() bool {
		svcs, _, err := c.Catalog().Service("db", "", nil)
		return err == nil && len(svcs) == 1 && svcs[0].Node == "ext-db" && svcs[0].ServicePort == 5432
	})
}
