package dns

import (
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// An external node from the servers' agreed state (registry.SetAgreed)
// answers .service and .node queries as an agent's does, and leaves the
// passing answers when its check fails.
func TestAgreedExternalService(t *testing.T) {
	reg := newRegistry(t)
	s := start(t, reg, nil)
	ext := func(status registry.Status, idx uint64) registry.Agreed {
		return registry.Agreed{Index: idx, CatalogIndex: idx, Nodes: []*registry.ExternalNode{{
			Node:     registry.NodeEntry{Node: registry.Node{Name: "ext-db", Address: "10.9.0.1"}},
			Services: []*registry.ServiceEntry{{Node: "ext-db", Service: registry.Service{ID: "db", Name: "db", Port: 5432, Weights: registry.Weights{Passing: 1, Warning: 1}}}},
			Checks:   []*registry.CheckEntry{{Node: "ext-db", Check: registry.Check{CheckID: "tcp", Status: status, ServiceID: "db", ServiceName: "db"}}},
		}}}
	}
	reg.SetAgreed(ext(registry.StatusPassing, 3))
	if r := ask(t, s.addr, "udp", "db.service.consul.", mdns.TypeA, 0); r.Rcode != 0 || len(r.Answer) != 1 || answers(r.Answer)[0] != "A 10.9.0.1" {
		t.Fatalf("db.service: %v", r)
	}
	if r := ask(t, s.addr, "udp", "ext-db.node.consul.", mdns.TypeA, 0); r.Rcode != 0 || len(r.Answer) != 1 {
		t.Fatalf("ext-db.node: %v", r)
	}
	reg.SetAgreed(ext(registry.StatusCritical, 4))
	if r := ask(t, s.addr, "udp", "db.service.consul.", mdns.TypeA, 0); len(r.Answer) != 0 {
		t.Fatalf("db.service with its check critical: %v", r)
	}
}
