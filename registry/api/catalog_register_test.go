package api_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

// runMirrors runs raft.RunMirror for each server, as the agent does, until
// the test ends (before the servers stop: cleanups run last first).
func runMirrors(t *testing.T, servers []*raftAgent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := raft.RunMirror(ctx, s.node, s.reg); err != nil {
				t.Errorf("mirror of %s: %v", s.name, err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// An external node registered through a client agent with the consul/api
// client reaches the leader, and, once the mirror has applied it, every
// server's health endpoint; deregistering its service and then the node
// takes them away again.
func TestRaftCatalogRegister(t *testing.T) {
	servers, client := startGroup(t)
	runMirrors(t, servers)
	cat := client.client.Catalog()
	reg := &consul.CatalogRegistration{
		Node: "ext-db", Address: "10.9.0.1", NodeMeta: map[string]string{"external-node": "true"},
		Service: &consul.AgentService{ID: "db1", Service: "db", Tags: []string{"primary"}, Port: 5432},
		Checks: consul.HealthChecks{
			{Node: "ext-db", CheckID: "db-tcp", Name: "tcp", Status: consul.HealthPassing, ServiceID: "db1"},
			{CheckID: "ext-ping", Name: "ping", Status: consul.HealthPassing},
		},
	}
	if _, err := cat.Register(reg, nil); err != nil {
		t.Fatal(err)
	}
	leader := leaderOf(servers)
	var es []*consul.ServiceEntry
	eventually.True(t, 10*time.Second, "the leader shows db", func() bool {
		var err error
		es, _, err = leader.client.Health().Service("db", "", true, nil)
		return err == nil && len(es) == 1
	})
	e := es[0]
	if e.Node.Node != "ext-db" || e.Node.Address != "10.9.0.1" || e.Node.Datacenter != "dc1" || e.Node.Meta["external-node"] != "true" ||
		e.Service.ID != "db1" || e.Service.Port != 5432 || len(e.Service.Tags) != 1 || e.Service.Weights.Passing != 1 ||
		len(e.Checks) != 2 || e.Checks.AggregatedStatus() != consul.HealthPassing {
		t.Fatalf("db on the leader: node %+v service %+v checks %+v", e.Node, e.Service, e.Checks)
	}
	for _, s := range servers {
		eventually.True(t, 10*time.Second, s.name+" shows db", func() bool {
			es, _, err := s.client.Health().Service("db", "", false, &consul.QueryOptions{AllowStale: true})
			return err == nil && len(es) == 1
		})
	}

	// The service goes (with its check); the node and its own check stay.
	if _, err := cat.Deregister(&consul.CatalogDeregistration{Node: "ext-db", ServiceID: "db1"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "db is gone from the leader", func() bool {
		es, _, err := leader.client.Health().Service("db", "", false, nil)
		return err == nil && len(es) == 0
	})
	checks, _, err := leader.client.Health().Node("ext-db", nil)
	if err != nil || len(checks) != 1 || checks[0].CheckID != "ext-ping" {
		t.Fatalf("ext-db's checks after its service left: %+v %v", checks, err)
	}
	if _, err := cat.Deregister(&consul.CatalogDeregistration{Node: "ext-db"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "ext-db is gone", func() bool {
		n, _, err := leader.client.Catalog().Node("ext-db", nil)
		return err == nil && n == nil
	})
}

// Bad input is a 400 that names the field, a gossip agent's node too, and
// nothing is stored; another datacenter is Consul's 500.
func TestRaftCatalogRegisterBadInput(t *testing.T) {
	servers, client := startGroup(t)
	cat := client.client.Catalog()
	good := func() *consul.CatalogRegistration {
		return &consul.CatalogRegistration{Node: "ext", Address: "10.0.0.1", Service: &consul.AgentService{Service: "web", Port: 80}}
	}
	for _, tc := range []struct {
		name, want string
		edit       func(*consul.CatalogRegistration)
	}{
		{"no node", "Node:", func(r *consul.CatalogRegistration) { r.Node = "" }},
		{"no address", "Address:", func(r *consul.CatalogRegistration) { r.Address = "" }},
		{"a client agent's node", "Node:", func(r *consul.CatalogRegistration) { r.Node = "c0" }},
		{"a server's node", "Node:", func(r *consul.CatalogRegistration) { r.Node = "s1" }},
		{"no service name", "Service.Service:", func(r *consul.CatalogRegistration) { r.Service.Service = "" }},
		{"a port out of range", "Service.Port:", func(r *consul.CatalogRegistration) { r.Service.Port = 70000 }},
		{"a Connect proxy", "Service.Kind:", func(r *consul.CatalogRegistration) { r.Service.Kind = consul.ServiceKindConnectProxy }},
		{"a bad check status", "Checks[0].Status:", func(r *consul.CatalogRegistration) {
			r.Checks = consul.HealthChecks{{CheckID: "c", Status: "fine"}}
		}},
		{"a check on another node", "Checks[0].Node:", func(r *consul.CatalogRegistration) {
			r.Checks = consul.HealthChecks{{Node: "other", CheckID: "c"}}
		}},
		{"a check on a missing service", "ServiceID", func(r *consul.CatalogRegistration) {
			r.Checks = consul.HealthChecks{{CheckID: "c", ServiceID: "nope"}}
		}},
		{"bad meta", "NodeMeta", func(r *consul.CatalogRegistration) { r.NodeMeta = map[string]string{"consul-x": "1"} }},
	} {
		r := good()
		tc.edit(r)
		_, err := cat.Register(r, nil)
		if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v (want a 400 naming %s)", tc.name, err, tc.want)
		}
	}
	if _, err := cat.Deregister(&consul.CatalogDeregistration{}, nil); err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "Node:") {
		t.Errorf("a deregistration without a node: %v", err)
	}
	if _, err := cat.Deregister(&consul.CatalogDeregistration{Node: "s2"}, nil); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("deregistering a server's node: %v", err)
	}
	r := good()
	r.Datacenter = "dc9"
	if _, err := cat.Register(r, nil); err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "No path to datacenter") {
		t.Errorf("another datacenter: %v", err)
	}
	for _, body := range []string{`{"Node":`, `[1]`, `{"Node":"ext","Address":"a","Service":{"Service":"web","Port":"eighty"}}`} {
		if code, msg, _ := httpDo(t, http.MethodPut, client.base+"/v1/catalog/register", body); code != http.StatusBadRequest || !strings.Contains(msg, "decode") {
			t.Errorf("body %s: %d %s", body, code, msg)
		}
	}
	leader := leaderOf(servers)
	if n := len(leader.node.State().ExternalNodes()); n != 0 {
		t.Fatalf("bad requests stored %d external nodes", n)
	}
	// The good one is accepted: the failures above were the edits'.
	if _, err := cat.Register(good(), nil); err != nil {
		t.Fatal(err)
	}
	if n := len(leader.node.State().ExternalNodes()); n != 1 {
		t.Fatalf("external nodes after a good registration: %d", n)
	}
}

// Consul's ACL rules on catalog register and deregister: node:write to
// create or change the node, service:write on the service; a token with
// service:write only may re-register its service on an unchanged node and
// deregister it, not change or remove the node.
func TestRaftCatalogRegisterACL(t *testing.T) {
	const extTok, dbTok = "33333333-ext", "44444444-db"
	cfg := testACL()
	cfg.Tokens = append(cfg.Tokens,
		api.ACLToken{Secret: extTok, Rules: api.ACLRules{NodePrefix: map[string]string{"ext-": "write"}, ServicePrefix: map[string]string{"db": "write"}}},
		api.ACLToken{Secret: dbTok, Rules: api.ACLRules{ServicePrefix: map[string]string{"db": "write"}}},
	)
	srv := startRaftAgent(t, "s0", true, nil, func(c *api.Config) { c.ACL = cfg })
	if err := srv.node.Bootstrap([]raft.Server{{ID: "s0", Address: srv.port, Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "s0 leads", srv.node.IsLeader)
	catalog := func(tok string) *consul.Catalog {
		c, err := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(srv.base, "http://"), Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		return c.Catalog()
	}
	reg := func(addr, svc string) *consul.CatalogRegistration {
		return &consul.CatalogRegistration{Node: "ext-db", Address: addr, Service: &consul.AgentService{Service: svc, Port: 5432}}
	}
	denied := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("%s: %v (want 403)", what, err)
		}
	}
	denied("a new node without node:write", func() error { _, err := catalog(dbTok).Register(reg("10.0.0.1", "db"), nil); return err }())
	denied("a service without service:write", func() error { _, err := catalog(extTok).Register(reg("10.0.0.1", "web"), nil); return err }())
	if _, err := catalog(extTok).Register(reg("10.0.0.1", "db"), nil); err != nil {
		t.Fatal(err)
	}
	// The node as it is: service:write is enough.
	if _, err := catalog(dbTok).Register(reg("10.0.0.1", "db"), nil); err != nil {
		t.Fatalf("re-registering db on an unchanged node: %v", err)
	}
	denied("changing the node's address", func() error { _, err := catalog(dbTok).Register(reg("10.0.0.2", "db"), nil); return err }())
	denied("removing the node", func() error {
		_, err := catalog(dbTok).Deregister(&consul.CatalogDeregistration{Node: "ext-db"}, nil)
		return err
	}())
	if _, err := catalog(dbTok).Deregister(&consul.CatalogDeregistration{Node: "ext-db", ServiceID: "db"}, nil); err != nil {
		t.Fatalf("deregistering db with service:write: %v", err)
	}
	if _, err := catalog(extTok).Deregister(&consul.CatalogDeregistration{Node: "ext-db"}, nil); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.node.State().ExternalNodes()); n != 0 {
		t.Fatalf("%d external nodes left", n)
	}
}

// Without servers, catalog register and deregister are still the 404 that
// names them.
func TestNoConsensusCatalogRegisterMissing(t *testing.T) {
	a := startAgent(t)
	for _, p := range []string{"/v1/catalog/register", "/v1/catalog/deregister"} {
		if code, body, _ := httpDo(t, http.MethodPut, a.base+p, `{"Node":"ext","Address":"10.0.0.1"}`); code != 404 || !strings.Contains(body, "does not serve") {
			t.Errorf("PUT %s: %d %q", p, code, body)
		}
	}
}
