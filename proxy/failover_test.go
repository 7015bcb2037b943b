package proxy

import (
	"slices"
	"strings"
	"testing"
)

// A route's failover order: the nearest N others, then the listed ones not
// in yet; and the mistakes Validate names.
func TestFailoverOrder(t *testing.T) {
	others := []string{"dc2", "dc3", "dc4"}
	for _, c := range []struct {
		f    Failover
		want []string
	}{
		{Failover{Nearest: 2}, []string{"dc2", "dc3"}},
		{Failover{Nearest: 9}, []string{"dc2", "dc3", "dc4"}},
		{Failover{Datacenters: []string{"dc4", "dc9"}}, []string{"dc4", "dc9"}},
		{Failover{Nearest: 1, Datacenters: []string{"dc2", "dc4"}}, []string{"dc2", "dc4"}},
	} {
		if got := c.f.order(others); !slices.Equal(got, c.want) {
			t.Errorf("%+v: %v, want %v", c.f, got, c.want)
		}
	}
	for _, c := range []struct {
		f    Failover
		want string
	}{
		{Failover{Nearest: -1}, "failover.nearest -1"},
		{Failover{}, "give nearest"},
		{Failover{Datacenters: []string{"dc 2"}}, "failover.datacenters"},
		{Failover{Datacenters: []string{""}}, "failover.datacenters"},
	} {
		r := Route{Path: "/", Service: "web", Failover: &c.f}
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.f, err, c.want)
		}
	}
	ok := Route{Path: "/", Service: "web", Failover: &Failover{Nearest: 2, Datacenters: []string{"dc3"}}}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}
