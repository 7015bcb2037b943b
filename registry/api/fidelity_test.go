package api_test

// Answers that Consul's own clients expect of a Consul agent (issue 20),
// through the consul/api client where it has a call.

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

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

// watchUntil is a watcher as consul-template or fabio runs one: a blocking
// query again and again with the index of the last answer, until done says
// the answer holds what it waits for. It returns how many answers it took.
func watchUntil(t *testing.T, what string, start uint64, fetch func(q *consul.QueryOptions) (done bool, meta *consul.QueryMeta, err error)) int {
	t.Helper()
	idx := start
	deadline := time.Now().Add(30 * time.Second)
	for n := 1; time.Now().Before(deadline); n++ {
		done, meta, err := fetch(&consul.QueryOptions{WaitIndex: idx, WaitTime: 20 * time.Second})
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return n
		}
		if meta.LastIndex == 0 || meta.LastIndex < idx {
			t.Errorf("%s: index went from %d to %d", what, idx, meta.LastIndex)
		}
		if done {
			return n
		}
		idx = meta.LastIndex
	}
	t.Errorf("%s: not done in 30s", what)
	return 0
}

// TestTableIndexes: catalog, health and KV answers have indexes of their
// own, as Consul's tables: KV writes wake no catalog or health watcher nor
// move its index, and catalog changes wake no KV watcher.
func TestTableIndexes(t *testing.T) {
	a := startAgent(t)
	c := a.client
	kv := c.KV()
	if _, err := kv.Put(&consul.KVPair{Key: "app/config", Value: []byte("v0")}, nil); err != nil {
		t.Fatal(err)
	}
	type watcher struct {
		name  string
		fetch func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error)
	}
	hasCheck := func(cs consul.HealthChecks) bool {
		for _, ch := range cs {
			if ch.CheckID == "service:web1" {
				return true
			}
		}
		return false
	}
	catalog := []watcher{
		{"catalog/services", func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error) {
			s, m, err := c.Catalog().Services(q)
			return s["web"] != nil, m, err
		}},
		{"catalog/service/web", func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error) {
			s, m, err := c.Catalog().Service("web", "", q)
			return len(s) == 1, m, err
		}},
		{"catalog/node/node1", func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error) {
			n, m, err := c.Catalog().Node("node1", q)
			return err == nil && n.Services["web1"] != nil, m, err
		}},
		{"health/service/web", func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error) {
			s, m, err := c.Health().Service("web", "", false, q)
			return len(s) == 1, m, err
		}},
		{"health/state/any", func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error) {
			cs, m, err := c.Health().State("any", q)
			return hasCheck(cs), m, err
		}},
		{"health/node/node1", func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error) {
			cs, m, err := c.Health().Node("node1", q)
			return hasCheck(cs), m, err
		}},
	}
	// Where each watcher starts: the index of its current answer.
	starts := make([]uint64, len(catalog))
	for i, w := range catalog {
		done, m, err := w.fetch(nil)
		if err != nil || done || m.LastIndex == 0 {
			t.Fatalf("%s: %v %v %+v", w.name, done, err, m)
		}
		starts[i] = m.LastIndex
	}
	_, nodesMeta, err := c.Catalog().Nodes(nil)
	if err != nil {
		t.Fatal(err)
	}

	counts := make([]int, len(catalog))
	var wg sync.WaitGroup
	for i, w := range catalog {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[i] = watchUntil(t, w.name, starts[i], w.fetch)
		}()
	}
	const writes = 20
	for i := range writes {
		if _, err := kv.Put(&consul.KVPair{Key: "unrelated/key", Value: []byte(fmt.Sprint(i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// The writes moved the KV index, and no catalog answer's.
	_, kvMeta, err := kv.Get("unrelated/key", nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range catalog {
		if _, m, err := w.fetch(nil); err != nil || m.LastIndex != starts[i] {
			t.Errorf("%s: index %d after KV writes, want %d (%v)", w.name, m.LastIndex, starts[i], err)
		}
	}
	if _, m, err := c.Catalog().Nodes(nil); err != nil || m.LastIndex != nodesMeta.LastIndex {
		t.Errorf("catalog/nodes: index %d after KV writes, want %d (%v)", m.LastIndex, nodesMeta.LastIndex, err)
	}

	// One catalog change wakes each watcher once.
	mustRegister(t, a, &consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80, Check: &consul.AgentServiceCheck{TTL: "1m"}})
	wg.Wait()
	for i, w := range catalog {
		if counts[i] != 1 {
			t.Errorf("%s: woken %d times by %d KV writes and one registration, want once", w.name, counts[i], writes)
		}
		if _, m, err := w.fetch(nil); err != nil || m.LastIndex <= starts[i] {
			t.Errorf("%s: index %d after the registration, want more than %d (%v)", w.name, m.LastIndex, starts[i], err)
		}
	}

	// And the reverse: catalog changes wake no KV watcher.
	kvCount := make(chan int, 1)
	go func() {
		kvCount <- watchUntil(t, "kv/app", kvMeta.LastIndex, func(q *consul.QueryOptions) (bool, *consul.QueryMeta, error) {
			ps, m, err := kv.List("app/", q)
			for _, p := range ps {
				if p.Key == "app/done" {
					return true, m, err
				}
			}
			return false, m, err
		})
	}()
	for i := range writes {
		if err := c.Agent().UpdateTTL("service:web1", fmt.Sprint(i), "pass"); err != nil {
			t.Fatal(err)
		}
		mustRegister(t, a, &consul.AgentServiceRegistration{ID: fmt.Sprint("api", i), Name: "api", Port: 81})
	}
	if _, m, err := kv.List("app/", nil); err != nil || m.LastIndex != kvMeta.LastIndex {
		t.Errorf("kv: index %d after catalog changes, want %d (%v)", m.LastIndex, kvMeta.LastIndex, err)
	}
	if _, err := kv.Put(&consul.KVPair{Key: "app/done", Value: []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	if n := <-kvCount; n != 1 {
		t.Errorf("kv/app: woken %d times by %d catalog changes and one write, want once", n, 2*writes)
	}
}

// Consul endpoints pier leaves out say so: Connect's as a Consul agent
// with Connect disabled answers, the ones still to come with a 404 that
// names the path.
func TestUnsupportedEndpointsSaySo(t *testing.T) {
	a := startAgent(t)
	if _, _, err := a.client.Agent().ConnectCARoots(nil); err == nil || !strings.Contains(err.Error(), "500") ||
		!strings.Contains(err.Error(), "Connect must be enabled") {
		t.Errorf("ConnectCARoots: %v", err)
	}
	if _, _, err := a.client.Connect().Intentions(nil); err == nil || !strings.Contains(err.Error(), "Consul Connect") {
		t.Errorf("Intentions: %v", err)
	}
	if _, _, err := a.client.Session().List(nil); err == nil || !strings.Contains(err.Error(), "404") ||
		!strings.Contains(err.Error(), "pier does not serve /v1/session/list") {
		t.Errorf("Session().List: %v", err)
	}
	if _, _, _, err := a.client.Txn().Txn(consul.TxnOps{{KV: &consul.KVTxnOp{Verb: consul.KVGet, Key: "a"}}}, nil); err == nil ||
		!strings.Contains(err.Error(), "pier does not serve /v1/txn") {
		t.Errorf("Txn: %v", err)
	}
	if _, _, err := a.client.PreparedQuery().List(nil); err == nil || !strings.Contains(err.Error(), "/v1/query") {
		t.Errorf("PreparedQuery().List: %v", err)
	}
}

// consul members reads a member's type from the role tag and its protocol
// from vsn: both are there, as on a Consul client agent.
func TestMemberTags(t *testing.T) {
	a := startAgent(t)
	ms, err := a.client.Agent().Members(false)
	if err != nil || len(ms) != 1 {
		t.Fatalf("Members: %+v %v", ms, err)
	}
	tags := ms[0].Tags
	for k, want := range map[string]string{"role": "node", "vsn": "2", "vsn_min": "2", "vsn_max": "3", "segment": "", "dc": "dc1"} {
		if got, ok := tags[k]; !ok || got != want {
			t.Errorf("tag %s = %q (present %v), want %q", k, got, ok, want)
		}
	}
	if tags["build"] == "" {
		t.Errorf("no build tag: %v", tags)
	}
	if _, err := a.client.Agent().MembersOpts(consul.MembersOpts{Segment: consul.AllSegments}); err != nil {
		t.Errorf("segment=_all: %v", err)
	}
}
