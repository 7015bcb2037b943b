package api_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/serf/coordinate"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

// TestPreparedQueries drives /v1/query through the consul/api client on a
// server of one: create, list, read (by ID), update, explain and execute
// (by ID and by name, with Tags, OnlyPassing and limit), the errors of a
// bad definition, a taken name, and delete.
func TestPreparedQueries(t *testing.T) {
	srv := startRaftAgent(t, "s0", true, nil, nil)
	if err := srv.node.Bootstrap([]raft.Server{{ID: "s0", Address: srv.port, Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "s0 leads", srv.node.IsLeader)
	for i, tags := range [][]string{{"primary", "v1"}, {"v1"}, {"v2"}} {
		id := "redis" + string(rune('1'+i))
		if err := srv.reg.RegisterService(registry.Service{ID: id, Name: "redis", Tags: tags, Port: 6379 + i}, nil, registry.SourceAgent); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.reg.RegisterService(registry.Service{ID: "redis-warn", Name: "redis", Tags: []string{"v1"}, Port: 7000},
		[]registry.Check{{CheckID: "w", Name: "w", Status: registry.StatusWarning, ServiceID: "redis-warn"}}, registry.SourceAgent); err != nil {
		t.Fatal(err)
	}
	pq := srv.client.PreparedQuery()
	def := &consul.PreparedQueryDefinition{Name: "redis-v1", Service: consul.ServiceQuery{Service: "redis", Tags: []string{"v1", "!PRIMARY"}}}
	id, _, err := pq.Create(def, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := pq.Get(id, nil)
	if err != nil || len(got) != 1 || got[0].Name != "redis-v1" || got[0].ID != id {
		t.Fatalf("Get: %+v, %v", got, err)
	}
	res, _, err := pq.Execute("redis-v1", nil)
	if err != nil || len(res.Nodes) != 2 || res.Datacenter != "dc1" || res.Failovers != 0 {
		t.Fatalf("Execute by name: %+v, %v", res, err)
	}
	for _, n := range res.Nodes {
		if n.Service.ID == "redis1" || n.Service.ID == "redis3" {
			t.Errorf("tags v1 and not primary kept %s", n.Service.ID)
		}
	}
	// OnlyPassing drops the warning instance; an update keeps the ID.
	def.ID = id
	def.Service.OnlyPassing = true
	if _, err := pq.Update(def, nil); err != nil {
		t.Fatal(err)
	}
	if res, _, err = pq.Execute(id, nil); err != nil || len(res.Nodes) != 1 || res.Nodes[0].Service.ID != "redis2" {
		t.Fatalf("Execute OnlyPassing: %+v, %v", res, err)
	}
	def.Service.OnlyPassing = false
	if _, err := pq.Update(def, nil); err != nil {
		t.Fatal(err)
	}
	var limited consul.PreparedQueryExecuteResponse
	if code := getStatusJSON(t, srv.base+"/v1/query/"+id+"/execute?limit=1", &limited); code != 200 || len(limited.Nodes) != 1 {
		t.Errorf("limit 1: %d, %d nodes", code, len(limited.Nodes))
	}
	if code := getStatusJSON(t, srv.base+"/v1/query/"+id+"/execute?limit=x", nil); code != 400 {
		t.Errorf("limit x: %d, want 400", code)
	}
	var ex struct {
		Query consul.PreparedQueryDefinition
	}
	if code := getStatusJSON(t, srv.base+"/v1/query/redis-v1/explain", &ex); code != 200 || ex.Query.ID != id || ex.Query.Service.Service != "redis" {
		t.Fatalf("explain: %d %+v", code, ex)
	}
	list, _, err := pq.List(nil)
	if err != nil || len(list) != 1 {
		t.Fatalf("List: %+v, %v", list, err)
	}

	// Bad input: 400 with a line naming what is wrong; nothing stored.
	for _, c := range []struct {
		def  *consul.PreparedQueryDefinition
		want string
	}{
		{&consul.PreparedQueryDefinition{Name: "x"}, "Must provide a Service name"},
		{&consul.PreparedQueryDefinition{Service: consul.ServiceQuery{Service: "redis"}}, "Must be bound to a session"},
		{&consul.PreparedQueryDefinition{Name: "x", Service: consul.ServiceQuery{Service: "redis", Failover: consul.QueryFailoverOptions{NearestN: -1}}}, "Bad NearestN"},
		{&consul.PreparedQueryDefinition{Name: "x", Service: consul.ServiceQuery{Service: "redis"}, DNS: consul.QueryDNSOptions{TTL: "soon"}}, "Bad DNS TTL"},
		{&consul.PreparedQueryDefinition{Name: "redis-v1", Service: consul.ServiceQuery{Service: "redis"}}, "aliases an existing query name"},
	} {
		if _, _, err := pq.Create(c.def, nil); err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Create %+v: %v, want 400 %q", c.def, err, c.want)
		}
	}
	if list, _, _ := pq.List(nil); len(list) != 1 {
		t.Errorf("after refused creates: %d queries", len(list))
	}
	if _, _, err := pq.Execute("nope", nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Execute of an unknown query: %v", err)
	}
	if _, err := pq.Delete(id, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pq.Get(id, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Get after Delete: %v", err)
	}
	// The name is free again.
	if _, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "redis-v1", Service: consul.ServiceQuery{Service: "redis"}}, nil); err != nil {
		t.Errorf("the name of a deleted query: %v", err)
	}
}

// getStatusJSON GETs url and decodes a 200 answer into v (when not nil).
func getStatusJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == 200 && v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// TestPreparedQueryNear: execute sorts this datacenter's instances by
// round trip from ?near=, else Service.Near, as Consul's: "_agent" is the
// agent asked, "_ip" the node whose address the client has (its
// X-Forwarded-For first); the near node comes first even without a
// coordinate (when it is among the first ten); nodes without one last.
func TestPreparedQueryNear(t *testing.T) {
	coords := &staticCoords{nodes: map[string]*coordinate.Coordinate{}}
	srv := startRaftAgent(t, "s0", true, nil, func(c *api.Config) { c.Cluster = coords })
	if err := srv.node.Bootstrap([]raft.Server{{ID: "s0", Address: srv.port, Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "s0 leads", srv.node.IsLeader)
	for i, n := range []string{"a", "b", "c", "d"} {
		addr := "10.9.0." + string(rune('1'+i))
		srv.reg.SetMemberStatus(n, addr, registry.MemberAlive)
		svc := registry.Service{ID: "web-" + n, Name: "web", Port: 80}
		srv.reg.Merge([]registry.Entry{{Node: n, Kind: registry.KindService, Key: svc.ID, Version: 7, Service: &svc}})
	}
	// s0 at 0; c at 5 ms, a at 20 ms, b at 50 ms; d has none.
	for n, ms := range map[string]float64{"s0": 0, "c": 5, "a": 20, "b": 50} {
		coords.UpdateCoordinate(n, at(ms))
	}
	pq := srv.client.PreparedQuery()
	if _, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "web", Service: consul.ServiceQuery{Service: "web"}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "web-ip", Service: consul.ServiceQuery{Service: "web", Near: "_ip"}}, nil); err != nil {
		t.Fatal(err)
	}
	order := func(name, query string, h http.Header) []string {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.base+"/v1/query/"+name+"/execute"+query, nil)
		req.Header = h
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res consul.PreparedQueryExecuteResponse
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range res.Nodes {
			out = append(out, n.Node.Node)
		}
		return out
	}
	for _, c := range []struct {
		name, query string
		h           http.Header
		want        []string // d, without a coordinate, is last
	}{
		{"web", "?near=_agent", nil, []string{"c", "a", "b", "d"}},
		{"web", "?near=b", nil, []string{"b", "a", "c", "d"}},
		{"web", "?near=_ip", http.Header{"X-Forwarded-For": {"10.9.0.1, 10.0.0.9"}}, []string{"a", "c", "b", "d"}},
		{"web-ip", "", http.Header{"X-Forwarded-For": {"10.9.0.2"}}, []string{"b", "a", "c", "d"}},
	} {
		if got := order(c.name, c.query, c.h); !slices.Equal(got, c.want) {
			t.Errorf("%s%s %v: %v, want %v", c.name, c.query, c.h, got, c.want)
		}
	}
	// d has no coordinate: no sort, but d first, as Consul puts the near
	// node first.
	for range 5 {
		if got := order("web", "?near=d", nil); len(got) != 4 || got[0] != "d" {
			t.Fatalf("near d: %v, want d first", got)
		}
	}
	// No near: shuffled, so every node comes first some time.
	first := map[string]bool{}
	for i := 0; i < 200 && len(first) < 4; i++ {
		first[order("web", "", nil)[0]] = true
	}
	if len(first) != 4 {
		t.Errorf("without near, only %v came first in 200 runs", first)
	}
}
