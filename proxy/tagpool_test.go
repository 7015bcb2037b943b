package proxy

import (
	"testing"
)

// TestTagRouteOnlyToTaggedInstances: a route from a urlprefix- tag sends
// traffic only to the instances that carry the tag, as fabio does, while a
// config route to the same service uses every healthy instance.
func TestTagRouteOnlyToTaggedInstances(t *testing.T) {
	tagged, plain := newBackend(t, "tagged"), newBackend(t, "plain")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/all/", Service: "web", Strip: "/all"}} })
	e.register("web-1", "web", tagged.addr, 1, "urlprefix-/v2 strip=/v2", "v2")
	e.register("web-2", "web", plain.addr, 1, "v1")

	hits := map[string]int{}
	for range 40 {
		code, body := e.get("", "/v2/x")
		if code != 200 {
			t.Fatalf("/v2/x: %d %s", code, body)
		}
		hits[decode(t, body).Name]++
	}
	if hits["plain"] != 0 || hits["tagged"] != 40 {
		t.Errorf("tag route went to %v; want only the tagged instance", hits)
	}
	clear(hits)
	for range 40 {
		code, body := e.get("", "/all/x")
		if code != 200 {
			t.Fatalf("/all/x: %d %s", code, body)
		}
		hits[decode(t, body).Name]++
	}
	if hits["plain"] == 0 || hits["tagged"] == 0 {
		t.Errorf("config route went to %v; want both instances", hits)
	}

	for _, ri := range e.p.Routes() {
		if ri.Path == "/v2" && (ri.Total != 1 || len(ri.Instances) != 1 || ri.Instances[0].Addr != tagged.addr) {
			t.Errorf("tag route shows %+v; want the tagged instance only", ri)
		}
	}

	// The untagged instance takes the tag: it joins the route. The tagged
	// one leaves: the route has only the other.
	e.register("web-2", "web", plain.addr, 1, "urlprefix-/v2 strip=/v2")
	e.deregister("web-1")
	e.synced()
	for range 5 {
		code, body := e.get("", "/v2/x")
		if code != 200 || decode(t, body).Name != "plain" {
			t.Fatalf("after moving the tag: %d %s", code, body)
		}
	}
	// A tag no instance carries any more takes its route with it, though
	// the service still has an instance.
	e.register("web-2", "web", plain.addr, 1, "urlprefix-/v3")
	e.synced()
	if code, body := e.get("", "/v2/x"); code != 404 {
		t.Errorf("after the tag went away: %d %s", code, body)
	}
	if code, _ := e.get("", "/v3/x"); code != 200 {
		t.Errorf("the new tag: %d", code)
	}
}
