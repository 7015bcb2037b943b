package api_test

import (
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"
)

// ?filter= with Consul's expression language, sent as the consul/api client
// sends it (QueryOptions.Filter), on every endpoint Consul filters.
func TestFilter(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	r2 := redisRegistration()
	r2.ID, r2.Tags, r2.Port, r2.Meta = "redis2", []string{"replica", "v1"}, 8002, map[string]string{"version": "6.0"}
	r2.Check = &consul.AgentServiceCheck{TTL: "1m", Status: "passing"}
	mustRegister(t, a, r2)
	mustRegister(t, a, &consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80, Tags: []string{"http"},
		Check: &consul.AgentServiceCheck{TTL: "1m"}})
	f := func(expr string) *consul.QueryOptions { return &consul.QueryOptions{Filter: expr} }

	cs, _, err := a.client.Catalog().Service("redis", "", f(`ServiceMeta.version == "7.2" and ServicePort == 8000`))
	if err != nil || len(cs) != 1 || cs[0].ServiceID != "redis1" {
		t.Errorf("Catalog().Service filtered: %v %v", ids(cs), err)
	}
	services, _, err := a.client.Catalog().Services(f(`"replica" in ServiceTags`))
	if err != nil || len(services) != 1 || !slices.Equal(services["redis"], []string{"replica", "v1"}) {
		t.Errorf("Catalog().Services filtered: %v %v", services, err)
	}
	nodes, _, err := a.client.Catalog().Nodes(f(`Node != "node1"`))
	if err != nil || len(nodes) != 0 {
		t.Errorf("Catalog().Nodes filtered out: %v %v", nodes, err)
	}
	cn, _, err := a.client.Catalog().Node("node1", f(`Service == web`))
	if err != nil || cn == nil || len(cn.Services) != 1 || cn.Services["web1"] == nil {
		t.Errorf("Catalog().Node filtered: %+v %v", cn, err)
	}
	entries, _, err := a.client.Health().Service("redis", "", false, f(`Service.Tags contains "replica"`))
	if err != nil || len(entries) != 1 || entries[0].Service.ID != "redis2" {
		t.Errorf("Health().Service filtered: %d %v", len(entries), err)
	}
	checks, _, err := a.client.Health().State("any", f(`Status == critical`))
	if err != nil || len(checks) != 1 || checks[0].ServiceID != "web1" {
		t.Errorf("Health().State filtered: %v %v", checks, err)
	}
	checks, _, err = a.client.Health().Checks("redis", f(`ServiceID == redis2`))
	if err != nil || len(checks) != 1 {
		t.Errorf("Health().Checks filtered: %v %v", checks, err)
	}
	checks, _, err = a.client.Health().Node("node1", f(`CheckID == serfHealth`))
	if err != nil || len(checks) != 1 {
		t.Errorf("Health().Node filtered: %v %v", checks, err)
	}
	svcs, err := a.client.Agent().ServicesWithFilter(`Service == redis and Port != 0`)
	if err != nil || len(svcs) != 2 || svcs["redis1"] == nil || svcs["redis2"] == nil {
		t.Errorf("Agent().ServicesWithFilter: %v %v", svcs, err)
	}
	achecks, err := a.client.Agent().ChecksWithFilter(`ServiceName == web`)
	if err != nil || len(achecks) != 1 {
		t.Errorf("Agent().ChecksWithFilter: %v %v", achecks, err)
	}

	// A bad expression, or a selector that names no field, is a 400 that
	// says filter; an empty answer is not evaluated, as in Consul.
	for _, q := range []string{`Service ==`, `ServiceTags contains`, `Nope == 1`} {
		code, body := do(t, a, "GET", "/v1/catalog/service/redis?filter="+url.QueryEscape(q), "")
		if code != 400 || !strings.HasPrefix(body, "filter: ") || strings.Count(strings.TrimSpace(body), "\n") != 0 {
			t.Errorf("filter %q: %d %q", q, code, body)
		}
	}
	if code, body := do(t, a, "GET", "/v1/catalog/service/none?filter="+url.QueryEscape(`Nope == 1`), ""); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("filter on an empty answer: %d %q", code, body)
	}
}

func ids(cs []*consul.CatalogService) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.ServiceID)
	}
	sort.Strings(out)
	return out
}

// A filter longer than 4 KiB, or one that takes the parser too many steps,
// is refused.
func TestFilterLimits(t *testing.T) {
	a := startAgent(t)
	long := strings.Repeat(`Service == web or `, 300) + `Service == web`
	nested := strings.Repeat("(", 2000) + "Service == web" + strings.Repeat(")", 2000)
	for _, q := range []string{long, strings.Repeat(" ", 5000) + "Service == web", nested} {
		if code, body := do(t, a, "GET", "/v1/agent/services?filter="+url.QueryEscape(q), ""); code != 400 || !strings.HasPrefix(body, "filter: ") {
			t.Errorf("filter of %d bytes: %d %.200q", len(q), code, body)
		}
	}
}

// Catalog().NodeServiceList reads /v1/catalog/node-services/:node: the
// node and its services as a list; an unknown node is null, as for
// /v1/catalog/node.
func TestNodeServiceList(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	l, _, err := a.client.Catalog().NodeServiceList("node1", nil)
	if err != nil || l == nil || l.Node == nil || l.Node.Node != "node1" {
		t.Fatalf("NodeServiceList: %+v %v", l, err)
	}
	var got []string
	for _, s := range l.Services {
		got = append(got, s.ID)
		if s.ID == "redis1" && (s.Port != 8000 || s.Meta["team"] != "cache") {
			t.Errorf("redis1: %+v", s)
		}
	}
	sort.Strings(got)
	if !slices.Equal(got, []string{"consul", "redis1"}) {
		t.Errorf("services %v", got)
	}
	l, _, err = a.client.Catalog().NodeServiceList("node1", &consul.QueryOptions{Filter: `Service == redis`})
	if err != nil || len(l.Services) != 1 {
		t.Errorf("NodeServiceList filtered: %+v %v", l, err)
	}
	l, _, err = a.client.Catalog().NodeServiceList("nobody", nil)
	if err != nil || l != nil {
		t.Errorf("unknown node: %+v %v", l, err)
	}
}
