package lb

import (
	"fmt"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// An external service from the servers' agreed state (registry.SetAgreed)
// gets a pool like an agent's, following its check's health.
func TestAgreedExternalPool(t *testing.T) {
	r := newRegistry(t)
	b := newBalancer(t, r, false)
	run(t, b)
	ext := func(status registry.Status, idx uint64) registry.Agreed {
		return registry.Agreed{Index: idx, CatalogIndex: idx, Nodes: []*registry.ExternalNode{{
			Node:     registry.NodeEntry{Node: registry.Node{Name: "ext-api", Address: "10.9.0.1"}},
			Services: []*registry.ServiceEntry{{Node: "ext-api", Service: registry.Service{ID: "api", Name: "api", Port: 9000, Weights: registry.Weights{Passing: 1, Warning: 1}}}},
			Checks:   []*registry.CheckEntry{{Node: "ext-api", Check: registry.Check{CheckID: "http", Status: status, ServiceID: "api", ServiceName: "api"}}},
		}}}
	}
	r.SetAgreed(ext(registry.StatusPassing, 3))
	waitIndex(t, b, r)
	var got []string
	for _, m := range b.Pool("api").Members() {
		got = append(got, m.Backend.Addr())
	}
	if fmt.Sprint(got) != "[10.9.0.1:9000]" {
		t.Fatalf("pool of api: %v", got)
	}
	r.SetAgreed(ext(registry.StatusCritical, 4))
	waitIndex(t, b, r)
	if p := b.Pool("api"); p != nil && len(p.Members()) != 0 {
		t.Errorf("pool of api with its check critical: %d members", len(p.Members()))
	}
}
