package api_test

// These tests drive pier's HTTP API with HashiCorp's official consul/api
// client, the way Registrator, consul-template and other Consul tooling do,
// and assert what a user of that client sees. Where the client cannot send
// what we want to test (bad input, wrong methods), plain net/http is used.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

// agent is one running pier API with a client pointed at it.
type agent struct {
	reg    *registry.Registry
	srv    *api.Server
	client *consul.Client
	addr   string       // host:port of the listener
	base   string       // http://host:port
	stop   func() error // cancels Run's context and returns what Run returned
}

// startAgent builds an in-memory registry for node1 at 127.0.0.1, serves its
// API on a real listener and returns a consul/api client for it. The server
// is stopped, and Run's return awaited, when the test ends.
func startAgent(t *testing.T) *agent {
	t.Helper()
	return startAgentWith(t, nil)
}

// startAgentWith is startAgent with edit applied to the registry's config.
func startAgentWith(t *testing.T, edit func(*registry.Config)) *agent {
	t.Helper()
	return startAgentCfg(t, edit, nil)
}

// startAPIAgent is startAgent with the API's config adjusted.
func startAPIAgent(t *testing.T, adjust func(*api.Config)) *agent {
	t.Helper()
	return startAgentCfg(t, nil, adjust)
}

func startAgentCfg(t *testing.T, edit func(*registry.Config), adjust func(*api.Config)) *agent {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = "node1"
	rcfg.Address = "127.0.0.1"
	if edit != nil {
		edit(&rcfg)
	}
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatalf("registry.New: %v", err)
	}
	acfg := api.DefaultConfig()
	acfg.Registry = reg
	acfg.Version = "test"
	if adjust != nil {
		adjust(&acfg)
	}
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatalf("api.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("Run did not return after its context was cancelled")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	addr := ln.Addr().String()
	client, err := consul.NewClient(&consul.Config{Address: addr, Scheme: "http"})
	if err != nil {
		t.Fatalf("consul/api NewClient: %v", err)
	}
	return &agent{reg: reg, srv: srv, client: client, addr: addr, base: "http://" + addr, stop: stop}
}

func redisRegistration() *consul.AgentServiceRegistration {
	return &consul.AgentServiceRegistration{
		ID:      "redis1",
		Name:    "redis",
		Tags:    []string{"master", "v1"},
		Address: "172.16.0.2",
		Port:    8000,
		Meta:    map[string]string{"version": "7.2", "team": "cache"},
		Weights: &consul.AgentWeights{Passing: 10, Warning: 1},
		// Check and Checks stay nil: the client then sends
		// "Check":null,"Checks":null, which must be accepted.
	}
}

func mustRegister(t *testing.T, a *agent, reg *consul.AgentServiceRegistration) {
	t.Helper()
	if err := a.client.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("ServiceRegister(%s): %v", reg.ID, err)
	}
}

// checkRedis asserts the fields Consul's agent endpoints show for redis1.
func checkRedis(t *testing.T, where string, s *consul.AgentService) {
	t.Helper()
	if s == nil {
		t.Fatalf("%s: redis1 missing", where)
	}
	want := consul.AgentService{
		ID:         "redis1",
		Service:    "redis",
		Tags:       []string{"master", "v1"},
		Meta:       map[string]string{"version": "7.2", "team": "cache"},
		Port:       8000,
		Address:    "172.16.0.2",
		Weights:    consul.AgentWeights{Passing: 10, Warning: 1},
		Datacenter: "dc1",
	}
	if s.ID != want.ID || s.Service != want.Service || s.Port != want.Port || s.Address != want.Address ||
		s.Weights != want.Weights || s.Datacenter != want.Datacenter || s.EnableTagOverride || s.Kind != "" ||
		!slices.Equal(s.Tags, want.Tags) || !maps.Equal(s.Meta, want.Meta) {
		t.Errorf("%s: got %+v\nwant %+v", where, *s, want)
	}
}

func TestAgentRegisterAndRead(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())

	svcs, err := a.client.Agent().Services()
	if err != nil {
		t.Fatalf("Agent().Services: %v", err)
	}
	checkRedis(t, "Agent().Services", svcs["redis1"])
	own, ok := svcs["consul"]
	if !ok {
		t.Fatalf("Agent().Services lacks the agent's own service consul: %v", slices.Sorted(maps.Keys(svcs)))
	}
	if own.Service != "consul" || own.ID != "consul" || own.Tags == nil || own.Meta == nil {
		t.Errorf("agent's own service: %+v", *own)
	}
	if len(svcs) != 2 {
		t.Errorf("Agent().Services has %d entries, want 2: %v", len(svcs), slices.Sorted(maps.Keys(svcs)))
	}

	one, _, err := a.client.Agent().Service("redis1", nil)
	if err != nil {
		t.Fatalf("Agent().Service: %v", err)
	}
	checkRedis(t, "Agent().Service", one)
	if one.ContentHash == "" {
		t.Errorf("Agent().Service: empty ContentHash")
	}

	name, err := a.client.Agent().NodeName()
	if err != nil || name != "node1" {
		t.Errorf("Agent().NodeName() = %q, %v; want node1", name, err)
	}
	self, err := a.client.Agent().Self()
	if err != nil {
		t.Fatalf("Agent().Self: %v", err)
	}
	if dc := self["Config"]["Datacenter"]; dc != "dc1" {
		t.Errorf(`Self()["Config"]["Datacenter"] = %v, want dc1`, dc)
	}

	// A registration without ID takes the name as ID, as in Consul, and
	// one without Port shows port 0.
	mustRegister(t, a, &consul.AgentServiceRegistration{Name: "web"})
	web, _, err := a.client.Agent().Service("web", nil)
	if err != nil {
		t.Fatalf("Agent().Service(web): %v", err)
	}
	if web.ID != "web" || web.Service != "web" || web.Port != 0 || web.Weights != (consul.AgentWeights{Passing: 1, Warning: 1}) ||
		web.Tags == nil || web.Meta == nil {
		t.Errorf("web: %+v", *web)
	}

	// An unknown service is a 404 for Agent().Service.
	_, _, err = a.client.Agent().Service("nope", nil)
	var se consul.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("Agent().Service(nope) error = %v, want a 404 StatusError", err)
	}
}

func TestReregisterReplaces(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	r := redisRegistration()
	r.Tags = []string{"replica"}
	r.Port = 8001
	r.Meta = nil
	r.Weights = nil
	mustRegister(t, a, r)

	s, _, err := a.client.Agent().Service("redis1", nil)
	if err != nil {
		t.Fatalf("Agent().Service: %v", err)
	}
	if !slices.Equal(s.Tags, []string{"replica"}) || s.Port != 8001 || len(s.Meta) != 0 || s.Weights != (consul.AgentWeights{Passing: 1, Warning: 1}) {
		t.Errorf("re-registered redis1: %+v", *s)
	}
	cs, _, err := a.client.Catalog().Service("redis", "", nil)
	if err != nil || len(cs) != 1 {
		t.Fatalf("Catalog().Service(redis) = %d entries, %v; want 1", len(cs), err)
	}
}

func TestCatalog(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	r2 := redisRegistration()
	r2.ID, r2.Tags, r2.Port = "redis2", []string{"replica", "v1"}, 8002
	mustRegister(t, a, r2)
	mustRegister(t, a, &consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80, Tags: []string{"http"}})

	services, qm, err := a.client.Catalog().Services(nil)
	if err != nil {
		t.Fatalf("Catalog().Services: %v", err)
	}
	if qm.LastIndex == 0 {
		t.Error("Catalog().Services: LastIndex 0")
	}
	want := map[string][]string{
		"consul": {},
		"redis":  {"master", "replica", "v1"},
		"web":    {"http"},
	}
	if !maps.EqualFunc(services, want, func(a, b []string) bool { return slices.Equal(a, b) }) {
		t.Errorf("Catalog().Services = %v, want %v", services, want)
	}
	if services["consul"] == nil {
		t.Error(`Catalog().Services: "consul" has null tags, Consul answers []`)
	}

	ids := func(cs []*consul.CatalogService) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.ServiceID)
		}
		return out
	}
	all, qm, err := a.client.Catalog().Service("redis", "", nil)
	if err != nil {
		t.Fatalf("Catalog().Service(redis): %v", err)
	}
	if got := ids(all); !slices.Equal(got, []string{"redis1", "redis2"}) {
		t.Errorf("Catalog().Service(redis) = %v", got)
	}
	if qm.LastIndex == 0 {
		t.Error("Catalog().Service: LastIndex 0")
	}
	c := all[0]
	if c.Node != "node1" || c.Address != "127.0.0.1" || c.Datacenter != "dc1" || c.ID == "" ||
		c.ServiceName != "redis" || c.ServiceAddress != "172.16.0.2" || c.ServicePort != 8000 ||
		!slices.Equal(c.ServiceTags, []string{"master", "v1"}) ||
		!maps.Equal(c.ServiceMeta, map[string]string{"version": "7.2", "team": "cache"}) ||
		c.ServiceWeights != (consul.Weights{Passing: 10, Warning: 1}) ||
		c.CreateIndex == 0 || c.ModifyIndex < c.CreateIndex {
		t.Errorf("Catalog().Service(redis)[0] = %+v", *c)
	}
	if c.TaggedAddresses["lan"] != "127.0.0.1" {
		t.Errorf("node TaggedAddresses = %v", c.TaggedAddresses)
	}

	for _, tc := range []struct {
		tags []string
		want []string
	}{
		{[]string{"master"}, []string{"redis1"}},
		{[]string{"v1"}, []string{"redis1", "redis2"}},
		{[]string{"replica", "v1"}, []string{"redis2"}},
		{[]string{"master", "replica"}, nil},
		{[]string{"nope"}, nil},
	} {
		var got []*consul.CatalogService
		if len(tc.tags) == 1 {
			got, _, err = a.client.Catalog().Service("redis", tc.tags[0], nil)
		} else {
			got, _, err = a.client.Catalog().ServiceMultipleTags("redis", tc.tags, &consul.QueryOptions{})
		}
		if err != nil {
			t.Fatalf("catalog service tags %v: %v", tc.tags, err)
		}
		if got == nil {
			t.Errorf("tags %v: decoded nil, Consul answers []", tc.tags)
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("tags %v: got %v, want %v", tc.tags, ids(got), tc.want)
		}
	}

	unknown, qm, err := a.client.Catalog().Service("nope", "", nil)
	if err != nil || unknown == nil || len(unknown) != 0 || qm.LastIndex == 0 {
		t.Errorf("Catalog().Service(nope) = %v, %+v, %v; want [], index >= 1", unknown, qm, err)
	}

	nodes, qm, err := a.client.Catalog().Nodes(nil)
	if err != nil {
		t.Fatalf("Catalog().Nodes: %v", err)
	}
	if len(nodes) != 1 || nodes[0].Node != "node1" || nodes[0].Address != "127.0.0.1" || nodes[0].Datacenter != "dc1" || nodes[0].ID == "" {
		t.Errorf("Catalog().Nodes = %+v", nodes)
	}
	if qm.LastIndex == 0 {
		t.Error("Catalog().Nodes: LastIndex 0")
	}

	node, qm, err := a.client.Catalog().Node("node1", nil)
	if err != nil {
		t.Fatalf("Catalog().Node: %v", err)
	}
	if node == nil || node.Node == nil || node.Node.Node != "node1" || node.Node.Address != "127.0.0.1" {
		t.Fatalf("Catalog().Node(node1) = %+v", node)
	}
	if got := slices.Sorted(maps.Keys(node.Services)); !slices.Equal(got, []string{"consul", "redis1", "redis2", "web1"}) {
		t.Errorf("Catalog().Node(node1).Services = %v", got)
	}
	checkRedis(t, "Catalog().Node", node.Services["redis1"])
	if qm.LastIndex == 0 {
		t.Error("Catalog().Node: LastIndex 0")
	}

	missing, _, err := a.client.Catalog().Node("nonode", nil)
	if err != nil || missing != nil {
		t.Errorf("Catalog().Node(nonode) = %+v, %v; want nil, nil", missing, err)
	}

	dcs, err := a.client.Catalog().Datacenters()
	if err != nil || !slices.Equal(dcs, []string{"dc1"}) {
		t.Errorf("Catalog().Datacenters() = %v, %v", dcs, err)
	}
}

func TestHealth(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	// A service whose TTL check has not yet passed is critical, as in Consul.
	mustRegister(t, a, &consul.AgentServiceRegistration{
		ID: "redis-sick", Name: "redis", Port: 8003,
		Check: &consul.AgentServiceCheck{TTL: "30s"},
	})

	entries, qm, err := a.client.Health().Service("redis", "", true, nil)
	if err != nil {
		t.Fatalf("Health().Service: %v", err)
	}
	if qm.LastIndex == 0 {
		t.Error("Health().Service: LastIndex 0")
	}
	if len(entries) != 1 {
		t.Fatalf("Health().Service(redis, passing) = %d entries, want 1 (redis1)", len(entries))
	}
	e := entries[0]
	checkRedis(t, "Health().Service", e.Service)
	if e.Node == nil || e.Node.Node != "node1" || e.Node.Address != "127.0.0.1" {
		t.Errorf("Health().Service node = %+v", e.Node)
	}
	var serf *consul.HealthCheck
	for _, c := range e.Checks {
		if c.CheckID == "serfHealth" {
			serf = c
		}
	}
	if serf == nil || serf.Status != consul.HealthPassing || serf.Node != "node1" || serf.ServiceID != "" {
		t.Errorf("Health().Service checks lack a passing serfHealth: %+v", e.Checks)
	}
	if st := e.Checks.AggregatedStatus(); st != consul.HealthPassing {
		t.Errorf("AggregatedStatus = %s", st)
	}

	all, _, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil || len(all) != 2 {
		t.Fatalf("Health().Service(redis, any) = %d entries, %v; want 2", len(all), err)
	}
	for _, e := range all {
		if e.Service.ID != "redis-sick" {
			continue
		}
		if st := e.Checks.AggregatedStatus(); st != consul.HealthCritical {
			t.Errorf("redis-sick aggregated status %s, want critical", st)
		}
		var own *consul.HealthCheck
		for _, c := range e.Checks {
			if c.ServiceID == "redis-sick" {
				own = c
			}
		}
		if own == nil || own.CheckID != "service:redis-sick" || own.Type != "ttl" || own.ServiceName != "redis" {
			t.Errorf("redis-sick's own check: %+v", own)
		}
	}

	tagged, _, err := a.client.Health().Service("redis", "master", false, nil)
	if err != nil || len(tagged) != 1 || tagged[0].Service.ID != "redis1" {
		t.Errorf("Health().Service(redis, master) = %d entries, %v", len(tagged), err)
	}

	nodeChecks, qm, err := a.client.Health().Node("node1", nil)
	if err != nil {
		t.Fatalf("Health().Node: %v", err)
	}
	if qm.LastIndex == 0 {
		t.Error("Health().Node: LastIndex 0")
	}
	gotIDs := func(cs consul.HealthChecks) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.CheckID)
		}
		slices.Sort(out)
		return out
	}
	if got := gotIDs(nodeChecks); !slices.Equal(got, []string{"serfHealth", "service:redis-sick"}) {
		t.Errorf("Health().Node(node1) = %v", got)
	}

	passing, qm, err := a.client.Health().State(consul.HealthPassing, nil)
	if err != nil {
		t.Fatalf("Health().State(passing): %v", err)
	}
	if qm.LastIndex == 0 {
		t.Error("Health().State: LastIndex 0")
	}
	if got := gotIDs(passing); !slices.Equal(got, []string{"serfHealth"}) {
		t.Errorf("Health().State(passing) = %v", got)
	}
	anyState, _, err := a.client.Health().State(consul.HealthAny, nil)
	if err != nil {
		t.Fatalf("Health().State(any): %v", err)
	}
	if got := gotIDs(anyState); !slices.Equal(got, []string{"serfHealth", "service:redis-sick"}) {
		t.Errorf("Health().State(any) = %v", got)
	}
	critical, _, err := a.client.Health().State(consul.HealthCritical, nil)
	if err != nil {
		t.Fatalf("Health().State(critical): %v", err)
	}
	if got := gotIDs(critical); !slices.Equal(got, []string{"service:redis-sick"}) {
		t.Errorf("Health().State(critical) = %v", got)
	}

	checks, _, err := a.client.Health().Checks("redis", nil)
	if err != nil {
		t.Fatalf("Health().Checks: %v", err)
	}
	if got := gotIDs(checks); !slices.Equal(got, []string{"service:redis-sick"}) {
		t.Errorf("Health().Checks(redis) = %v", got)
	}
}

func TestStatus(t *testing.T) {
	a := startAgent(t)
	leader, err := a.client.Status().Leader()
	if err != nil {
		t.Fatalf("Status().Leader: %v", err)
	}
	host, port, err := net.SplitHostPort(leader)
	if err != nil || net.ParseIP(host) == nil || port == "" || port == "0" {
		t.Errorf("Status().Leader() = %q, want ip:port", leader)
	}
	peers, err := a.client.Status().Peers()
	if err != nil {
		t.Fatalf("Status().Peers: %v", err)
	}
	if !slices.Contains(peers, leader) {
		t.Errorf("Status().Peers() = %v, want it to hold the leader %q", peers, leader)
	}
}

// healthResult is the outcome of one Health().Service call made in a
// goroutine.
type healthResult struct {
	entries []*consul.ServiceEntry
	meta    *consul.QueryMeta
	err     error
	elapsed time.Duration
}

func healthAsync(a *agent, name string, q *consul.QueryOptions) <-chan healthResult {
	ch := make(chan healthResult, 1)
	go func() {
		start := time.Now()
		es, qm, err := a.client.Health().Service(name, "", false, q)
		ch <- healthResult{es, qm, err, time.Since(start)}
	}()
	return ch
}

func TestBlockingWakesOnChange(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	_, qm, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil {
		t.Fatalf("Health().Service: %v", err)
	}
	if qm.LastIndex == 0 {
		t.Fatal("LastIndex 0")
	}

	const wait = 30 * time.Second
	res := healthAsync(a, "redis", &consul.QueryOptions{WaitIndex: qm.LastIndex, WaitTime: wait})
	r2 := redisRegistration()
	r2.ID, r2.Port = "redis2", 8002
	mustRegister(t, a, r2)

	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("blocking Health().Service: %v", r.err)
		}
		if r.meta.LastIndex <= qm.LastIndex {
			t.Errorf("woke with index %d, want > %d", r.meta.LastIndex, qm.LastIndex)
		}
		var got []string
		for _, e := range r.entries {
			got = append(got, e.Service.ID)
		}
		if !slices.Equal(got, []string{"redis1", "redis2"}) {
			t.Errorf("woke with instances %v, want [redis1 redis2]", got)
		}
		if r.elapsed > wait/2 {
			t.Errorf("blocking query took %v to wake", r.elapsed)
		}
	case <-time.After(wait / 2):
		t.Fatal("blocking query did not wake on a new instance of its service")
	}
}

func TestBlockingTimesOutUnchanged(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	_, qm, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil {
		t.Fatalf("Health().Service: %v", err)
	}

	const wait = 300 * time.Millisecond
	r := <-healthAsync(a, "redis", &consul.QueryOptions{WaitIndex: qm.LastIndex, WaitTime: wait})
	if r.err != nil {
		t.Fatalf("blocking Health().Service: %v", r.err)
	}
	if r.meta.LastIndex != qm.LastIndex {
		t.Errorf("unchanged service answered index %d, want %d", r.meta.LastIndex, qm.LastIndex)
	}
	if len(r.entries) != 1 {
		t.Errorf("got %d entries, want 1", len(r.entries))
	}
	if r.elapsed < wait*3/4 {
		t.Errorf("blocking query returned after %v, want about %v", r.elapsed, wait)
	}
	if r.elapsed > 20*time.Second {
		t.Errorf("blocking query returned after %v, far past its wait of %v", r.elapsed, wait)
	}
}

func TestBlockingIgnoresOtherServices(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	_, qm, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil {
		t.Fatalf("Health().Service: %v", err)
	}
	_, cqm, err := a.client.Catalog().Services(nil)
	if err != nil {
		t.Fatalf("Catalog().Services: %v", err)
	}

	// Change another service again and again for as long as the query
	// waits, so that changes certainly land while it is blocked.
	const wait = 500 * time.Millisecond
	res := healthAsync(a, "redis", &consul.QueryOptions{WaitIndex: qm.LastIndex, WaitTime: wait})
	var r healthResult
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	changes := 0
loop:
	for {
		select {
		case r = <-res:
			break loop
		case <-tick.C:
			changes++
			mustRegister(t, a, &consul.AgentServiceRegistration{
				ID: "web1", Name: "web", Port: 80,
				Meta: map[string]string{"n": fmt.Sprint(changes)},
			})
		}
	}
	if r.err != nil {
		t.Fatalf("blocking Health().Service: %v", r.err)
	}
	if r.meta.LastIndex != qm.LastIndex {
		t.Errorf("changes to web moved redis's index from %d to %d", qm.LastIndex, r.meta.LastIndex)
	}
	if r.elapsed < wait*3/4 {
		t.Errorf("query on redis returned after %v, before its wait of %v: woken by changes to web", r.elapsed, wait)
	}
	// The changes did happen, and a catalog-wide query sees them.
	_, cqm2, err := a.client.Catalog().Services(nil)
	if err != nil {
		t.Fatalf("Catalog().Services: %v", err)
	}
	if changes == 0 || cqm2.LastIndex <= cqm.LastIndex {
		t.Errorf("%d changes to web; catalog index %d -> %d", changes, cqm.LastIndex, cqm2.LastIndex)
	}
}

func TestBlockingCancelledByContext(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	_, qm, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil {
		t.Fatalf("Health().Service: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := (&consul.QueryOptions{WaitIndex: qm.LastIndex, WaitTime: 30 * time.Second}).WithContext(ctx)
	res := healthAsync(a, "redis", q)
	// Give the request time to reach the server; if it has not, the
	// cancellation ends it on the client side, which is also correct.
	stop := time.AfterFunc(100*time.Millisecond, cancel)
	defer stop.Stop()
	select {
	case r := <-res:
		if !errors.Is(r.err, context.Canceled) {
			t.Errorf("cancelled blocking query returned %v, want context.Canceled", r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("cancelling the context did not end the blocking query")
	}

	// The server is still serving, and the index did not move.
	_, qm2, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil || qm2.LastIndex != qm.LastIndex {
		t.Errorf("after cancel: index %v, err %v", qm2, err)
	}
}

func TestLastIndexNeverZero(t *testing.T) {
	a := startAgent(t)
	check := func(what string, qm *consul.QueryMeta, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if qm.LastIndex == 0 {
			t.Errorf("%s: LastIndex 0", what)
		}
	}
	_, qm, err := a.client.Catalog().Services(nil)
	check("Catalog().Services", qm, err)
	_, qm, err = a.client.Catalog().Service("never-registered", "", nil)
	check("Catalog().Service(never-registered)", qm, err)
	_, qm, err = a.client.Health().Service("never-registered", "", true, nil)
	check("Health().Service(never-registered)", qm, err)
	_, qm, err = a.client.Health().Checks("never-registered", nil)
	check("Health().Checks(never-registered)", qm, err)
	_, qm, err = a.client.Catalog().Nodes(nil)
	check("Catalog().Nodes", qm, err)
	_, qm, err = a.client.Catalog().Node("nonode", nil)
	check("Catalog().Node(nonode)", qm, err)
	_, qm, err = a.client.Health().Node("nonode", nil)
	check("Health().Node(nonode)", qm, err)
	_, qm, err = a.client.Health().State(consul.HealthAny, nil)
	check("Health().State(any)", qm, err)

	// A service registered and removed again keeps a non-zero index that
	// is past the one it had before it existed.
	_, before, err := a.client.Health().Service("tmp", "", false, nil)
	check("Health().Service(tmp) before", before, err)
	mustRegister(t, a, &consul.AgentServiceRegistration{Name: "tmp", Port: 1})
	if err := a.client.Agent().ServiceDeregister("tmp"); err != nil {
		t.Fatalf("ServiceDeregister(tmp): %v", err)
	}
	_, after, err := a.client.Health().Service("tmp", "", false, nil)
	check("Health().Service(tmp) after", after, err)
	if err == nil && after.LastIndex <= before.LastIndex {
		t.Errorf("index of a registered-then-removed service went %d -> %d, want it to grow", before.LastIndex, after.LastIndex)
	}
}

func TestDeregister(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	mustRegister(t, a, &consul.AgentServiceRegistration{
		ID: "redis-ttl", Name: "redis", Port: 8004,
		Check: &consul.AgentServiceCheck{TTL: "30s"},
	})
	if err := a.client.Agent().ServiceDeregister("redis1"); err != nil {
		t.Fatalf("ServiceDeregister(redis1): %v", err)
	}
	if err := a.client.Agent().ServiceDeregister("redis-ttl"); err != nil {
		t.Fatalf("ServiceDeregister(redis-ttl): %v", err)
	}

	svcs, err := a.client.Agent().Services()
	if err != nil {
		t.Fatalf("Agent().Services: %v", err)
	}
	if got := slices.Sorted(maps.Keys(svcs)); !slices.Equal(got, []string{"consul"}) {
		t.Errorf("Agent().Services after deregister = %v", got)
	}
	if _, _, err := a.client.Agent().Service("redis1", nil); err == nil {
		t.Error("Agent().Service(redis1) still answers after deregister")
	}
	catalog, _, err := a.client.Catalog().Services(nil)
	if err != nil {
		t.Fatalf("Catalog().Services: %v", err)
	}
	if _, ok := catalog["redis"]; ok {
		t.Errorf("Catalog().Services still lists redis: %v", catalog)
	}
	cs, _, err := a.client.Catalog().Service("redis", "", nil)
	if err != nil || len(cs) != 0 {
		t.Errorf("Catalog().Service(redis) = %d entries, %v", len(cs), err)
	}
	hs, _, err := a.client.Health().Service("redis", "", false, nil)
	if err != nil || len(hs) != 0 {
		t.Errorf("Health().Service(redis) = %d entries, %v", len(hs), err)
	}
	node, _, err := a.client.Catalog().Node("node1", nil)
	if err != nil {
		t.Fatalf("Catalog().Node: %v", err)
	}
	if got := slices.Sorted(maps.Keys(node.Services)); !slices.Equal(got, []string{"consul"}) {
		t.Errorf("Catalog().Node(node1).Services = %v", got)
	}
	checks, _, err := a.client.Health().Node("node1", nil)
	if err != nil {
		t.Fatalf("Health().Node: %v", err)
	}
	if len(checks) != 1 || checks[0].CheckID != "serfHealth" {
		t.Errorf("Health().Node(node1) after deregister = %+v", checks)
	}

	// An unknown ID is an error that carries Consul's 404.
	err = a.client.Agent().ServiceDeregister("no-such-service")
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("ServiceDeregister(unknown) = %v, want an error naming 404", err)
	}
	for _, method := range []string{http.MethodPut, http.MethodPost} {
		code, body := do(t, a, method, "/v1/agent/service/deregister/no-such-service", "")
		if code != http.StatusNotFound {
			t.Errorf("%s deregister unknown: %d %q, want 404", method, code, body)
		}
	}

	// The agent's own service cannot be removed.
	if err := a.client.Agent().ServiceDeregister("consul"); err == nil {
		t.Error("ServiceDeregister(consul) succeeded")
	}
	svcs, err = a.client.Agent().Services()
	if err != nil || svcs["consul"] == nil {
		t.Errorf("the agent's own service is gone: %v, %v", svcs, err)
	}
}

// do sends one request with plain net/http and returns the status and body.
func do(t *testing.T, a *agent, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, a.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp.StatusCode, string(b)
}

func TestRegisterPlainHTTP(t *testing.T) {
	a := startAgent(t)
	// The seed's curl example, sent with POST as curl -d does, and with PUT.
	for i, method := range []string{http.MethodPost, http.MethodPut} {
		id := fmt.Sprintf("redis%d", i+1)
		body := `{"ID":"` + id + `","Name":"redis","Tags":["master","v1"],"Address":"172.16.0.2","Port":8000}`
		if code, msg := do(t, a, method, "/v1/agent/service/register", body); code != http.StatusOK {
			t.Fatalf("%s register: %d %q", method, code, msg)
		}
	}
	// snake_case keys as Consul accepts them.
	body := `{"id":"db1","name":"db","port":5432,"enable_tag_override":true}`
	if code, msg := do(t, a, http.MethodPut, "/v1/agent/service/register", body); code != http.StatusOK {
		t.Fatalf("snake_case register: %d %q", code, msg)
	}
	svcs, err := a.client.Agent().Services()
	if err != nil {
		t.Fatalf("Agent().Services: %v", err)
	}
	if got := slices.Sorted(maps.Keys(svcs)); !slices.Equal(got, []string{"consul", "db1", "redis1", "redis2"}) {
		t.Errorf("services = %v", got)
	}
	if db := svcs["db1"]; db == nil || !db.EnableTagOverride || db.Port != 5432 {
		t.Errorf("db1 = %+v", db)
	}
}

func TestRegisterBadInput(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	before, err := a.client.Agent().Services()
	if err != nil {
		t.Fatalf("Agent().Services: %v", err)
	}

	manyMeta := map[string]string{}
	for i := range 65 {
		manyMeta[fmt.Sprintf("k%d", i)] = "v"
	}
	metaJSON := func(m map[string]string) string {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			parts = append(parts, fmt.Sprintf("%q:%q", k, m[k]))
		}
		return "{" + strings.Join(parts, ",") + "}"
	}

	// Each case would replace redis1 if it were accepted.
	for _, tc := range []struct {
		name, body, field string
	}{
		{"malformed JSON", `{"ID":"redis1","Name":"redis",`, ""},
		{"not JSON", `ID=redis1`, ""},
		{"not an object", `["redis1"]`, ""},
		{"empty body", ``, ""},
		{"missing Name", `{"ID":"redis1","Port":8000}`, "Name"},
		{"port -1", `{"ID":"redis1","Name":"redis","Port":-1}`, "Port"},
		{"port 70000", `{"ID":"redis1","Name":"redis","Port":70000}`, "Port"},
		{"port explicit 0", `{"ID":"redis1","Name":"redis","Port":0}`, "Port"},
		{"port a string", `{"ID":"redis1","Name":"redis","Port":"8000"}`, "Port"},
		{"bad check interval", `{"ID":"redis1","Name":"redis","Port":8000,"Check":{"HTTP":"http://127.0.0.1:8000/","Interval":"zz"}}`, "Interval"},
		{"bad interval in Checks", `{"ID":"redis1","Name":"redis","Port":8000,"Checks":[{"TCP":"127.0.0.1:8000","Interval":"zz"}]}`, "Interval"},
		{"meta bad key", `{"ID":"redis1","Name":"redis","Port":8000,"Meta":{"bad key!":"v"}}`, "Meta"},
		{"meta 65 pairs", `{"ID":"redis1","Name":"redis","Port":8000,"Meta":` + metaJSON(manyMeta) + `}`, "Meta"},
		{"meta key too long", `{"ID":"redis1","Name":"redis","Port":8000,"Meta":{"` + strings.Repeat("k", 129) + `":"v"}}`, "Meta"},
		{"meta value too long", `{"ID":"redis1","Name":"redis","Port":8000,"Meta":{"k":"` + strings.Repeat("v", 513) + `"}}`, "Meta"},
		{"check without a type in Checks", `{"ID":"redis1","Name":"redis","Port":8000,"Checks":[{"Notes":"no type"}]}`, "Checks[0]"},
		{"check without interval", `{"ID":"redis1","Name":"redis","Port":8000,"Check":{"HTTP":"http://127.0.0.1:8000/"}}`, "Interval"},
		{"weights passing 0", `{"ID":"redis1","Name":"redis","Port":8000,"Weights":{"Passing":0,"Warning":1}}`, "Weights"},
		{"agent's own ID", `{"ID":"consul","Name":"redis","Port":8000}`, "consul"},
	} {
		for _, method := range []string{http.MethodPut, http.MethodPost} {
			t.Run(tc.name+"/"+method, func(t *testing.T) {
				code, body := do(t, a, method, "/v1/agent/service/register", tc.body)
				if code != http.StatusBadRequest {
					t.Errorf("status %d (%q), want 400", code, body)
				}
				if !strings.HasSuffix(body, "\n") || strings.Count(body, "\n") != 1 || len(strings.TrimSpace(body)) == 0 {
					t.Errorf("body %q is not one line", body)
				}
				if !strings.Contains(body, tc.field) {
					t.Errorf("body %q does not name %s", body, tc.field)
				}
				after, err := a.client.Agent().Services()
				if err != nil {
					t.Fatalf("Agent().Services: %v", err)
				}
				if !maps.EqualFunc(before, after, agentServiceEqual) {
					t.Errorf("services changed by a rejected registration:\nbefore %v\nafter  %v", dump(before), dump(after))
				}
			})
		}
	}

	// The limits themselves are accepted: 64 pairs, a 128-character key, a
	// 512-character value.
	limit := map[string]string{strings.Repeat("k", 128): strings.Repeat("v", 512)}
	for i := range 63 {
		limit[fmt.Sprintf("k%d", i)] = "v"
	}
	body := `{"ID":"limits","Name":"limits","Port":1,"Meta":` + metaJSON(limit) + `}`
	if code, msg := do(t, a, http.MethodPut, "/v1/agent/service/register", body); code != http.StatusOK {
		t.Errorf("registration at the Meta limits: %d %q", code, msg)
	}
}

func agentServiceEqual(a, b *consul.AgentService) bool {
	return a.ID == b.ID && a.Service == b.Service && a.Port == b.Port && a.Address == b.Address &&
		a.Weights == b.Weights && a.EnableTagOverride == b.EnableTagOverride &&
		slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Meta, b.Meta)
}

func dump(m map[string]*consul.AgentService) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "%s=%+v ", k, *m[k])
	}
	return b.String()
}

func TestHTTPErrors(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())

	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodDelete, "/v1/agent/service/register", http.StatusMethodNotAllowed},
		{http.MethodPost, "/v1/agent/services", http.StatusMethodNotAllowed},
		{http.MethodPut, "/v1/catalog/services", http.StatusMethodNotAllowed},
		{http.MethodGet, "/v1/health/state/bogus", http.StatusBadRequest},
		{http.MethodGet, "/v1/catalog/services?wait=bogus", http.StatusBadRequest},
		{http.MethodGet, "/v1/health/service/redis?index=1&wait=bogus", http.StatusBadRequest},
		{http.MethodGet, "/v1/catalog/service/redis?index=abc", http.StatusBadRequest},
		{http.MethodGet, "/v1/health/service/redis?passing=maybe", http.StatusBadRequest},
	} {
		code, body := do(t, a, tc.method, tc.path, "")
		if code != tc.want {
			t.Errorf("%s %s: %d %q, want %d", tc.method, tc.path, code, body, tc.want)
		}
	}
	_, body := do(t, a, http.MethodGet, "/v1/catalog/services?wait=bogus", "")
	if !strings.Contains(body, "wait") {
		t.Errorf("?wait=bogus answer %q does not name wait", body)
	}
	_, body = do(t, a, http.MethodGet, "/v1/health/state/bogus", "")
	if !strings.Contains(body, "bogus") {
		t.Errorf("/v1/health/state/bogus answer %q does not name the state", body)
	}

	// A body over 1 MiB is refused whole.
	big := `{"ID":"redis1","Name":"redis","Port":8000,"Meta":{"k":"` + strings.Repeat("x", 1<<20) + `"}}`
	resp, err := http.Post(a.base+"/v1/agent/service/register", "application/json", bytes.NewReader([]byte(big)))
	if err != nil {
		t.Fatalf("POST 1 MiB body: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("1 MiB body: status %d, want 413", resp.StatusCode)
	}
	s, _, err := a.client.Agent().Service("redis1", nil)
	if err != nil {
		t.Fatalf("Agent().Service: %v", err)
	}
	checkRedis(t, "after the 413", s)
}

// Agent().Service blocks on the ContentHash (?hash=) as Consul's agent does.
func TestAgentServiceHashBlocking(t *testing.T) {
	a := startAgent(t)
	mustRegister(t, a, redisRegistration())
	s, _, err := a.client.Agent().Service("redis1", nil)
	if err != nil {
		t.Fatalf("Agent().Service: %v", err)
	}
	hash := s.ContentHash

	// Unchanged: answers after the wait with the same hash.
	const wait = 300 * time.Millisecond
	start := time.Now()
	s2, _, err := a.client.Agent().Service("redis1", &consul.QueryOptions{WaitHash: hash, WaitTime: wait})
	if err != nil {
		t.Fatalf("Agent().Service(hash): %v", err)
	}
	if el := time.Since(start); el < wait*3/4 {
		t.Errorf("hash-blocking query on an unchanged service returned after %v, want about %v", el, wait)
	}
	if s2.ContentHash != hash {
		t.Errorf("unchanged service's hash went %q -> %q", hash, s2.ContentHash)
	}

	// Changed: wakes with a new hash.
	type result struct {
		s   *consul.AgentService
		err error
	}
	res := make(chan result, 1)
	go func() {
		s, _, err := a.client.Agent().Service("redis1", &consul.QueryOptions{WaitHash: hash, WaitTime: 30 * time.Second})
		res <- result{s, err}
	}()
	r := redisRegistration()
	r.Port = 9000
	mustRegister(t, a, r)
	select {
	case got := <-res:
		if got.err != nil {
			t.Fatalf("Agent().Service(hash): %v", got.err)
		}
		if got.s.Port != 9000 || got.s.ContentHash == hash {
			t.Errorf("woke with port %d, hash %q (old %q)", got.s.Port, got.s.ContentHash, hash)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("hash-blocking Agent().Service did not wake on a change")
	}
}

// A connection that never sends a request (a client's spare pooled
// connection, a TCP health probe) must not hold up shutdown.
func TestShutdownWithIdleConnection(t *testing.T) {
	a := startAgent(t)
	raw, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer raw.Close()
	// A request on a second connection: the listener accepts in order, so
	// the silent connection has been accepted once this answers.
	if _, err := a.client.Status().Leader(); err != nil {
		t.Fatalf("Status().Leader: %v", err)
	}
	start := time.Now()
	if err := a.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if el := time.Since(start); el > 4*time.Second {
		t.Errorf("shutdown took %v with a silent connection open", el)
	}
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); err == nil {
		t.Errorf("silent connection still open after shutdown (read %d bytes)", n)
	}
}
