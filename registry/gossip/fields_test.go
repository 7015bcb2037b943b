package gossip

import (
	"reflect"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

// TestServiceFieldsReplicate: a service's Locality, Ports and SocketPath,
// and the agent's locality on its node, reach the other nodes.
func TestServiceFieldsReplicate(t *testing.T) {
	loc := &registry.Locality{Region: "eu", Zone: "eu-1a"}
	n0 := startNode(t, "n0", opts{})
	n1 := startNode(t, "n1", opts{join: []string{n0.g.Addr()}, reg: func(c *registry.Config) { c.Locality = loc }})
	svc := registry.Service{ID: "app1", Name: "app", Port: 8080, Weights: registry.Weights{Passing: 1, Warning: 1},
		Ports:      []registry.ServicePort{{Name: "http", Port: 8080, Default: true}, {Name: "admin", Port: 9090}},
		SocketPath: "/run/app.sock", Locality: &registry.Locality{Region: "eu", Zone: "eu-1b"}}
	if err := n1.reg.RegisterService(svc, nil, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	waitFor(t, n0.reg, 30*time.Second, "app1 with its fields and n1's locality", func(s *registry.Snapshot) bool {
		for _, in := range s.ServiceInstances("app") {
			if in.Node.Name == "n1" && reflect.DeepEqual(in.Service.Service, svc) &&
				in.Node.Locality != nil && *in.Node.Locality == *loc {
				return true
			}
		}
		return false
	})
}
