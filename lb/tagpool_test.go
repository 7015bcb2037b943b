package lb

import (
	"testing"

	"github.com/pier-dev/pier/registry"
)

// TestTagPools: a urlprefix- tag gets a pool of the healthy instances that
// carry it, sharing their Backends with the service's pool; other tags
// get none.
func TestTagPools(t *testing.T) {
	r := newRegistry(t)
	reg := func(id string, port int, status registry.Status, tags ...string) {
		t.Helper()
		var checks []registry.Check
		if status != "" {
			checks = []registry.Check{{CheckID: id + "-c", Name: "c", Status: status}}
		}
		s := registry.Service{ID: id, Name: "web", Port: port, Tags: tags, Weights: registry.Weights{Passing: 1, Warning: 1}}
		if err := r.RegisterService(s, checks, registry.SourceAPI); err != nil {
			t.Fatal(err)
		}
	}
	const tag = "urlprefix-/v2 strip=/v2"
	reg("w1", 9001, "", tag, "v2", tag) // a tag listed twice counts once
	reg("w2", 9002, "", "v1")
	reg("w3", 9003, registry.StatusCritical, tag)
	b := newBalancer(t, r, false)

	tp := b.TagPool("web", tag)
	if tp.Len() != 1 || tp.Total() != 2 || tp.Members()[0].ID != "w1" || tp.Service() != "web" {
		t.Fatalf("tag pool: %d of %d: %+v", tp.Len(), tp.Total(), tp.Members())
	}
	if sp := b.Pool("web"); sp.Len() != 2 || sp.Members()[0].Backend != tp.Members()[0].Backend {
		t.Errorf("the service pool and the tag pool do not share the backend: %+v", sp.Members())
	}
	for _, other := range []string{"v1", "v2", "urlprefix-/v3"} {
		if p := b.TagPool("web", other); p != nil {
			t.Errorf("tag %q has a pool: %+v", other, p.Members())
		}
	}
	if p := b.TagPool("api", tag); p != nil {
		t.Errorf("another service's tag pool: %+v", p.Members())
	}
	if n := testing.AllocsPerRun(1000, func() { b.TagPool("web", tag) }); n != 0 {
		t.Errorf("TagPool allocates %v times", n)
	}
}
