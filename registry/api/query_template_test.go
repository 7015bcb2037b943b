package api

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

// A template rendered as Consul's: each string of Service, the regexp's
// groups (none past the last, none without a match), the suffix trimmed
// with case, metadata values (not keys), empty tags removed.
func TestTemplateRender(t *testing.T) {
	q := preparedQuery{Name: "geo-", Template: queryTemplate{Type: templateNamePrefixMatch, Regexp: `^geo-([a-z]+)-(\w+)$`, RemoveEmptyTags: true},
		Service: queryService{Service: "${match(1)}", Tags: []string{"${match(2)}", "${match(3)}", "x${1+1}"},
			Near: "${name.suffix}", NodeMeta: map[string]string{"${k}": "${name.full}"}, Failover: queryFailover{Datacenters: []string{"${agent.segment}"}}}}
	ct, err := compileTemplate(q) // ${k} would be an unknown variable, were keys rendered
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, service, near string
		tags                []string
	}{
		{"geo-db-west", "db", "db-west", []string{"west", "x2"}},
		{"GEO-db-west", "", "GEO-db-west", []string{"x2"}}, // the regexp has case; the suffix keeps the whole name
		{"geo-", "", "", []string{"x2"}},
	} {
		r, err := ct.render(c.name, "")
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.Service.Service != c.service || r.Service.Near != c.near || !slices.Equal(r.Service.Tags, c.tags) ||
			r.Service.NodeMeta["${k}"] != c.name || r.Service.Failover.Datacenters[0] != "" {
			t.Errorf("%s: %+v", c.name, r.Service)
		}
	}
	if q.Service.Tags[0] != "${match(2)}" || ct.q.Service.NodeMeta["${k}"] != "${name.full}" {
		t.Error("rendering changed the template")
	}
}

// Renders of one template at once (HIL rewrites a tree as it checks it).
func TestTemplateRenderConcurrent(t *testing.T) {
	ct, err := compileTemplate(preparedQuery{Name: "n", Template: queryTemplate{Type: templateNamePrefixMatch},
		Service: queryService{Service: "${name.suffix}-${1}", Tags: []string{"${2 + 3}"}}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				name := fmt.Sprintf("n%d-%d", g, i)
				r, err := ct.render(name, "")
				if err != nil || r.Service.Service != name[1:]+"-1" || r.Service.Tags[0] != "5" {
					t.Errorf("%s: %+v, %v", name, r.Service, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
