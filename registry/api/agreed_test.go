package api_test

import (
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry"
)

// What the servers agree on (registry.SetAgreed, fed by registry/raft's
// mirror) reaches Consul's clients through the API unchanged: an external
// node's service in the catalog and health endpoints, a blocking health
// query woken by its check's change, and agreed KV keys.
func TestAgreedStateThroughAPI(t *testing.T) {
	a := startAgent(t)
	ext := func(status registry.Status) *registry.ExternalNode {
		return &registry.ExternalNode{
			Node:     registry.NodeEntry{Node: registry.Node{Name: "ext-db", Address: "10.9.0.1", Meta: map[string]string{"external-node": "true"}}},
			Services: []*registry.ServiceEntry{{Node: "ext-db", Service: registry.Service{ID: "db", Name: "db", Tags: []string{}, Port: 5432, Weights: registry.Weights{Passing: 1, Warning: 1}}}},
			Checks:   []*registry.CheckEntry{{Node: "ext-db", Check: registry.Check{CheckID: "db-tcp", Name: "tcp", Status: status, ServiceID: "db", ServiceName: "db", ServiceTags: []string{}}}},
		}
	}
	kv := registry.KVTree([]*registry.KVEntry{{Key: "app/a", Value: []byte("1"), CreateIndex: 7, ModifyIndex: 7}})
	a.reg.SetAgreed(registry.Agreed{Index: 7, KVIndex: 7, KV: kv, CatalogIndex: 5, Nodes: []*registry.ExternalNode{ext(registry.StatusPassing)}})

	nodes, _, err := a.client.Catalog().Nodes(nil)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("catalog nodes: %v %v", nodes, err)
	}
	svcs, _, err := a.client.Catalog().Service("db", "", nil)
	if err != nil || len(svcs) != 1 || svcs[0].Node != "ext-db" || svcs[0].ServicePort != 5432 || svcs[0].NodeMeta["external-node"] != "true" {
		t.Fatalf("catalog service db: %+v %v", svcs, err)
	}
	healthy, meta, err := a.client.Health().Service("db", "", true, nil)
	if err != nil || len(healthy) != 1 || healthy[0].Checks.AggregatedStatus() != consul.HealthPassing {
		t.Fatalf("passing db: %+v %v", healthy, err)
	}
	pair, _, err := a.client.KV().Get("app/a", nil)
	if err != nil || pair == nil || string(pair.Value) != "1" || pair.ModifyIndex != 7 {
		t.Fatalf("agreed key: %+v %v", pair, err)
	}

	// A blocking query on db's health wakes when its check goes critical.
	got := make(chan int, 1)
	go func() {
		es, _, err := a.client.Health().Service("db", "", true, &consul.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second})
		if err != nil {
			t.Error(err)
		}
		got <- len(es)
	}()
	time.Sleep(50 * time.Millisecond) // let the query block (it answers right either way)
	a.reg.SetAgreed(registry.Agreed{Index: 8, KVIndex: 7, KV: kv, CatalogIndex: 8, Nodes: []*registry.ExternalNode{ext(registry.StatusCritical)}})
	select {
	case n := <-got:
		if n != 0 {
			t.Errorf("passing instances after the check failed: %d", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the blocking query did not wake")
	}
}
