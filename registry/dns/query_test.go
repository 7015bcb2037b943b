package dns

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// orderedRemote answers every prepared query with five instances in a
// fixed order, and remembers who asked.
type orderedRemote struct {
	mu   sync.Mutex
	srcs []netip.Addr
}

func (*orderedRemote) Instances(context.Context, string, string, string) ([]registry.Instance, error) {
	return nil, registry.ErrNotFound
}

func (*orderedRemote) Node(context.Context, string, string) (*registry.NodeEntry, error) {
	return nil, nil
}

func (o *orderedRemote) Query(_ context.Context, dc, name string, src netip.Addr) (string, time.Duration, []registry.Instance, error) {
	o.mu.Lock()
	o.srcs = append(o.srcs, src)
	o.mu.Unlock()
	var out []registry.Instance
	for _, a := range []string{"10.0.0.5", "10.0.0.3", "10.0.0.1", "10.0.0.4", "10.0.0.2"} {
		out = append(out, registry.Instance{Node: &registry.NodeEntry{Node: registry.Node{Name: "n" + a, Address: a}},
			Service: &registry.ServiceEntry{Node: "n" + a, Service: registry.Service{ID: "web", Name: "web", Port: 80}}})
	}
	return "dc1", 0, out, nil
}

// A prepared query's answer keeps the order the query gave it (shuffled,
// then sorted by distance when it ran), as Consul's DNS: no shuffle and no
// rotation of its own; and the query is told the client's address (near
// _ip).
func TestPreparedQueryOrderAndSource(t *testing.T) {
	remote := &orderedRemote{}
	srv := start(t, newRegistry(t), func(c *Config) { c.Remote = remote })
	want := []string{"A 10.0.0.5", "A 10.0.0.3", "A 10.0.0.1", "A 10.0.0.4", "A 10.0.0.2"}
	for i := range 20 {
		network := []string{"udp", "tcp"}[i%2]
		r := ask(t, srv.addr, network, "web-q.query.consul.", mdns.TypeA, 0)
		w := want
		if network == "udp" {
			w = want[:3] // udp_answer_limit: the first three, the nearest
		}
		if got := answers(r.Answer); !slices.Equal(got, w) {
			t.Fatalf("answer %d over %s: %v, want the query's order %v", i, network, got, w)
		}
	}
	remote.mu.Lock()
	defer remote.mu.Unlock()
	for _, a := range remote.srcs {
		if a != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("the query was told the client is %v", a)
		}
	}
}
