package api

import (
	"slices"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// Consul's failover order: the NearestN nearest, then the listed ones not
// tried yet that the WAN pool knows; and execute's filter.
func TestQueryFailoverOrderAndFilter(t *testing.T) {
	q := preparedQuery{Service: queryService{Failover: queryFailover{NearestN: 1, Datacenters: []string{"dc3", "dc2", "dc9", "dc4"}}}}
	if got := q.failoverDatacenters([]string{"dc2", "dc3", "dc4"}); !slices.Equal(got, []string{"dc2", "dc3", "dc4"}) {
		t.Errorf("order: %v", got)
	}
	q = preparedQuery{Service: queryService{Tags: []string{"V1", "!old"}, OnlyPassing: true, IgnoreCheckIDs: []string{"flaky"}}}
	in := func(status registry.Status, tags ...string) registry.Instance {
		return registry.Instance{Node: &registry.NodeEntry{}, Service: &registry.ServiceEntry{Service: registry.Service{Tags: tags}},
			Checks: []*registry.CheckEntry{{Check: registry.Check{CheckID: "c", Status: status}}, {Check: registry.Check{CheckID: "flaky", Status: registry.StatusCritical}}}}
	}
	for _, c := range []struct {
		in   registry.Instance
		keep bool
	}{
		{in(registry.StatusPassing, "v1"), true},
		{in(registry.StatusPassing, "v1", "OLD"), false},
		{in(registry.StatusPassing, "v2"), false},
		{in(registry.StatusWarning, "v1"), false},
		{in(registry.StatusCritical, "v1"), false},
	} {
		if got := q.keep(c.in); got != c.keep {
			t.Errorf("keep %v %v: %v", c.in.Service.Tags, c.in.Checks[0].Status, got)
		}
	}
}
