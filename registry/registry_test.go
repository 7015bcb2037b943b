package registry

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Helpers in this file carry an "rt" prefix so that they cannot collide with
// those of other test files in the package.

const rtNode = "node-1"

func rtConfig(dir string) Config {
	cfg := DefaultConfig()
	cfg.NodeName = rtNode
	cfg.Address = "10.0.0.1"
	cfg.DataDir = dir
	return cfg
}

func rtNew(t testing.TB, dir string) *Registry {
	t.Helper()
	r, err := New(rtConfig(dir))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

// rtBuild decodes and builds a service definition as the API does.
func rtBuild(t testing.TB, js string) (Service, []Check) {
	t.Helper()
	def, err := DecodeService([]byte(js), false)
	if err != nil {
		t.Fatalf("DecodeService(%s): %v", js, err)
	}
	s, cs, err := def.Build()
	if err != nil {
		t.Fatalf("Build(%s): %v", js, err)
	}
	return s, cs
}

// rtReg builds js and registers it from src.
func rtReg(t testing.TB, r *Registry, src Source, js string) (Service, []Check) {
	t.Helper()
	s, cs := rtBuild(t, js)
	if err := r.RegisterService(s, cs, src); err != nil {
		t.Fatalf("RegisterService(%s): %v", js, err)
	}
	return s, cs
}

func rtDereg(t testing.TB, r *Registry, id string) {
	t.Helper()
	if err := r.DeregisterService(id); err != nil {
		t.Fatalf("DeregisterService(%q): %v", id, err)
	}
}

func rtClosed(s *Snapshot) bool {
	select {
	case <-s.Changed():
		return true
	default:
		return false
	}
}

func rtServiceIDs(es []*ServiceEntry) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, e.ID)
	}
	return out
}

func rtInstanceIDs(ins []Instance) []string {
	out := []string{}
	for _, in := range ins {
		out = append(out, in.Service.ID)
	}
	return out
}

func rtCheckIDs(cs []*CheckEntry) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.CheckID)
	}
	return out
}

func rtNames(nts []NameTags) []string {
	out := []string{}
	for _, nt := range nts {
		out = append(out, nt.Name)
	}
	return out
}

func rtCheck(t testing.TB, snap *Snapshot, serviceID, checkID string) *CheckEntry {
	t.Helper()
	for _, c := range snap.NodeChecks(rtNode, serviceID) {
		if c.CheckID == checkID {
			return c
		}
	}
	t.Fatalf("check %q of service %q not in snapshot %d (have %v)", checkID, serviceID, snap.Index(), rtCheckIDs(snap.AllNodeChecks(rtNode)))
	return nil
}

func rtEqual[T any](t testing.TB, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s = %#v, want %#v", what, got, want)
	}
}

func TestNewRegistersSelf(t *testing.T) {
	r := rtNew(t, "")
	snap := r.Snapshot()
	if snap.Index() == 0 {
		t.Fatal("first snapshot has index 0")
	}
	n, ok := snap.Node(rtNode)
	if !ok {
		t.Fatalf("node %q missing from %v", rtNode, snap.Nodes())
	}
	if !validUUID(n.ID) || n.ID != r.Config().NodeID || r.Self().ID != n.ID {
		t.Fatalf("node ID %q, config %q, self %q", n.ID, r.Config().NodeID, r.Self().ID)
	}
	if n.Address != "10.0.0.1" || n.Datacenter != "dc1" || n.TaggedAddresses["lan"] != "10.0.0.1" || n.TaggedAddresses["wan"] != "10.0.0.1" {
		t.Fatalf("node = %+v", n.Node)
	}

	checks := snap.AllNodeChecks(rtNode)
	rtEqual(t, "node checks", rtCheckIDs(checks), []string{SerfCheckID})
	if c := checks[0]; c.Status != StatusPassing || c.ServiceID != "" {
		t.Fatalf("serfHealth = %+v", c)
	}

	svcs := snap.NodeServices(rtNode)
	rtEqual(t, "node services", rtServiceIDs(svcs), []string{AgentServiceID})
	if s := svcs[0]; s.Name != AgentServiceID || s.Port != 8301 || s.Weights != (Weights{1, 1}) {
		t.Fatalf("agent service = %+v", s.Service)
	}
	ins := snap.ServiceInstances(AgentServiceID)
	if len(ins) != 1 || ins[0].Status() != StatusPassing || ins[0].Node.Name != rtNode {
		t.Fatalf("consul instances = %+v", ins)
	}
	rtEqual(t, "instance checks", rtCheckIDs(ins[0].Checks), []string{SerfCheckID})
	rtEqual(t, "service names", snap.ServiceNames(), []NameTags{{Name: AgentServiceID, Tags: []string{}}})
	if src, ok := r.LocalSource(AgentServiceID); !ok || src != SourceAgent {
		t.Fatalf("LocalSource(consul) = %q, %v", src, ok)
	}
	if nn, ns, nc := snap.Counts(); nn != 1 || ns != 1 || nc != 1 {
		t.Fatalf("Counts = %d, %d, %d", nn, ns, nc)
	}

	// The agent's service and check are protected from every other source.
	for _, src := range []Source{SourceAPI, SourceConfig} {
		err := r.RegisterService(Service{ID: AgentServiceID, Name: AgentServiceID, Port: 1}, nil, src)
		if !errors.Is(err, ErrProtected) {
			t.Fatalf("overwrite consul from %s: err = %v, want ErrProtected", src, err)
		}
		err = r.RegisterService(Service{ID: AgentServiceID, Name: "web", Port: 80}, nil, src)
		if !errors.Is(err, ErrProtected) {
			t.Fatalf("re-use ID consul from %s: err = %v, want ErrProtected", src, err)
		}
	}
	if err := r.DeregisterService(AgentServiceID); !errors.Is(err, ErrProtected) {
		t.Fatalf("deregister consul: err = %v, want ErrProtected", err)
	}
	if err := r.RegisterCheck(Check{CheckID: SerfCheckID, Name: "x", Status: StatusCritical}, SourceAPI); !errors.Is(err, ErrProtected) {
		t.Fatalf("overwrite serfHealth: err = %v, want ErrProtected", err)
	}
	if r.Snapshot() != snap || rtClosed(snap) {
		t.Fatal("a refused change published a snapshot")
	}
	if s, _ := snap.NodeService(rtNode, AgentServiceID); s.Port != 8301 {
		t.Fatalf("consul changed: %+v", s)
	}
}

func TestNewConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
		ok   bool
	}{
		{"defaults", func(*Config) {}, true},
		{"no node name", func(c *Config) { c.NodeName = "" }, false},
		{"node name with space", func(c *Config) { c.NodeName = "a b" }, false},
		{"no address", func(c *Config) { c.Address = "" }, false},
		{"bad node meta", func(c *Config) { c.NodeMeta = map[string]string{"consul-x": "y"} }, false},
		{"good node meta", func(c *Config) { c.NodeMeta = map[string]string{"rack_id": "r1"} }, true},
		{"empty datacenter", func(c *Config) { c.Datacenter = "" }, true},
		{"explicit node ID", func(c *Config) { c.NodeID = "01234567-89ab-4cde-8f01-23456789abcd" }, true},
		{"malformed node ID", func(c *Config) { c.NodeID = "01234567-89ab" }, false},
		{"version", func(c *Config) { c.Version = "1.2.3" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := rtConfig("")
			tc.edit(&cfg)
			r, err := New(cfg)
			if (err == nil) != tc.ok {
				t.Fatalf("New: err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				return
			}
			self := r.Self()
			if self.Datacenter == "" {
				t.Fatal("empty datacenter not defaulted")
			}
			if cfg.NodeID != "" && self.ID != cfg.NodeID {
				t.Fatalf("node ID = %q, want %q", self.ID, cfg.NodeID)
			}
			// Consul's agent adds its segment (none) and version.
			want := map[string]string{"consul-network-segment": "", "consul-version": cfg.Version}
			maps.Copy(want, cfg.NodeMeta)
			if !reflect.DeepEqual(self.Meta, want) {
				t.Fatalf("node meta = %v, want %v", self.Meta, want)
			}
		})
	}
}

func TestIndexAndChanged(t *testing.T) {
	r := rtNew(t, "")
	prev := r.Snapshot()
	step := func(what string, f func() error) {
		t.Helper()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		next := r.Snapshot()
		switch {
		case next.Index() == 0:
			t.Fatalf("%s: index 0", what)
		case next.Index() <= prev.Index():
			t.Fatalf("%s: index %d did not grow past %d", what, next.Index(), prev.Index())
		case !rtClosed(prev):
			t.Fatalf("%s: previous snapshot's Changed not closed", what)
		case rtClosed(next):
			t.Fatalf("%s: new snapshot's Changed already closed", what)
		}
		prev = next
	}
	reg := func(js string) func() error {
		return func() error {
			s, cs := rtBuild(t, js)
			return r.RegisterService(s, cs, SourceAPI)
		}
	}
	step("register web-1", reg(`{"ID":"web-1","Name":"web","Port":80}`))
	step("register web-2", reg(`{"ID":"web-2","Name":"web","Port":81,"Check":{"TTL":"10s"}}`))
	step("re-register web-1", reg(`{"ID":"web-1","Name":"web","Port":82}`))
	step("register db", reg(`{"Name":"db","Port":5432}`))
	step("update check", func() error { return r.UpdateCheck("service:web-2", StatusPassing, "ok") })
	step("register node check", func() error {
		return r.RegisterCheck(Check{CheckID: "mem", Name: "mem", Status: StatusPassing}, SourceAPI)
	})
	step("deregister node check", func() error { return r.DeregisterCheck("mem") })
	step("deregister web-1", func() error { return r.DeregisterService("web-1") })
	step("deregister web-2", func() error { return r.DeregisterService("web-2") })
	step("deregister db", func() error { return r.DeregisterService("db") })
}

// TestTableIndexes: each table's index moves with a change to that table
// only, never goes back and is never 0, and the catalog's and the KV
// store's channels close only for changes of their own.
func TestTableIndexes(t *testing.T) {
	r := rtNew(t, "")
	closed := func(c <-chan struct{}) bool {
		select {
		case <-c:
			return true
		default:
			return false
		}
	}
	type idx struct{ nodes, services, checks, kv uint64 }
	read := func(s *Snapshot) idx { return idx{s.NodesIndex(), s.ServicesIndex(), s.ChecksIndex(), s.KVIndex()} }
	prev := r.Snapshot()
	if i := read(prev); i.nodes == 0 || i.services == 0 || i.checks == 0 || i.kv == 0 {
		t.Fatalf("an index is 0 at start: %+v", i)
	}
	step := func(what string, want idx, f func() error) {
		t.Helper()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		next := r.Snapshot()
		p, n := read(prev), read(next)
		// want holds 1 where the table must move, 0 where it must not.
		for _, c := range []struct {
			name       string
			moves      bool
			before, at uint64
		}{{"nodes", want.nodes == 1, p.nodes, n.nodes}, {"services", want.services == 1, p.services, n.services},
			{"checks", want.checks == 1, p.checks, n.checks}, {"kv", want.kv == 1, p.kv, n.kv}} {
			switch {
			case c.moves && (c.at <= c.before || c.at != next.Index()):
				t.Errorf("%s: %s index %d -> %d, want the snapshot's %d", what, c.name, c.before, c.at, next.Index())
			case !c.moves && c.at != c.before:
				t.Errorf("%s: %s index moved %d -> %d", what, c.name, c.before, c.at)
			}
		}
		catalog := want.nodes+want.services+want.checks > 0
		if closed(prev.CatalogChanged()) != catalog || closed(prev.KVChanged()) != (want.kv == 1) {
			t.Errorf("%s: catalog channel closed %v, KV channel closed %v", what, closed(prev.CatalogChanged()), closed(prev.KVChanged()))
		}
		if closed(next.CatalogChanged()) || closed(next.KVChanged()) {
			t.Errorf("%s: the new snapshot's channels are closed", what)
		}
		prev = next
	}
	step("KV put", idx{kv: 1}, func() error { _, err := r.KVPut("a", []byte("1"), 0, nil); return err })
	step("another KV put", idx{kv: 1}, func() error { _, err := r.KVPut("a", []byte("2"), 0, nil); return err })
	step("register web", idx{services: 1, checks: 1}, func() error {
		s, cs := rtBuild(t, `{"ID":"web-1","Name":"web","Port":80,"Check":{"TTL":"10s"}}`)
		return r.RegisterService(s, cs, SourceAPI)
	})
	step("update its check", idx{checks: 1}, func() error { return r.UpdateCheck("service:web-1", StatusPassing, "ok") })
	step("KV delete", idx{kv: 1}, func() error { _, err := r.KVDelete("a", false, nil); return err })
	step("a node joins", idx{nodes: 1, checks: 1}, func() error { r.SetMemberStatus("n2", "10.0.0.2", MemberAlive); return nil })
	step("deregister web", idx{services: 1, checks: 1}, func() error { return r.DeregisterService("web-1") })
	step("the node leaves", idx{nodes: 1, checks: 1}, func() error { r.SetMemberStatus("n2", "", MemberLeft); return nil })
}

func TestRegisterReplaces(t *testing.T) {
	r := rtNew(t, "")
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["a"],"Port":80,"Check":{"TTL":"10s"}}`)
	s1 := r.Snapshot()
	e1, _ := s1.NodeService(rtNode, "web-1")
	rtEqual(t, "checks", rtCheckIDs(s1.NodeChecks(rtNode, "web-1")), []string{"service:web-1"})

	// The same ID with other checks: the old check goes.
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["b"],"Port":81,"Checks":[{"TTL":"10s"},{"TTL":"20s"}]}`)
	s2 := r.Snapshot()
	rtEqual(t, "checks", rtCheckIDs(s2.NodeChecks(rtNode, "web-1")), []string{"service:web-1:1", "service:web-1:2"})
	rtEqual(t, "node services", rtServiceIDs(s2.NodeServices(rtNode)), []string{"consul", "web-1"})
	e2, _ := s2.NodeService(rtNode, "web-1")
	if e2.Port != 81 || !slices.Equal(e2.Tags, []string{"b"}) {
		t.Fatalf("replaced service = %+v", e2.Service)
	}
	if e2.CreateIndex != e1.CreateIndex || e2.ModifyIndex != s2.Index() || e2.ModifyIndex <= e1.ModifyIndex {
		t.Fatalf("indexes: first %d/%d, replaced %d/%d, snapshot %d", e1.CreateIndex, e1.ModifyIndex, e2.CreateIndex, e2.ModifyIndex, s2.Index())
	}
	for _, c := range s2.NodeChecks(rtNode, "web-1") {
		if !slices.Equal(c.ServiceTags, []string{"b"}) || c.ServiceName != "web" {
			t.Fatalf("check %s shows service %q tags %v", c.CheckID, c.ServiceName, c.ServiceTags)
		}
	}
	var local []string
	for _, c := range r.LocalChecks() {
		local = append(local, c.CheckID)
	}
	rtEqual(t, "LocalChecks", local, []string{"service:web-1:1", "service:web-1:2"})

	// Without checks: none are left.
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":81}`)
	if cs := r.Snapshot().NodeChecks(rtNode, "web-1"); len(cs) != 0 {
		t.Fatalf("checks left after re-registration without checks: %v", rtCheckIDs(cs))
	}
	if len(r.LocalChecks()) != 0 {
		t.Fatalf("LocalChecks = %v", r.LocalChecks())
	}

	// A new Name moves the instance (and its checks) to the new name.
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":81,"Check":{"TTL":"10s"}}`)
	before := r.Snapshot()
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"api","Port":81,"Check":{"TTL":"10s"}}`)
	after := r.Snapshot()
	if ins := after.ServiceInstances("web"); len(ins) != 0 {
		t.Fatalf("old name still has instances %v", rtInstanceIDs(ins))
	}
	rtEqual(t, "api instances", rtInstanceIDs(after.ServiceInstances("api")), []string{"web-1"})
	rtEqual(t, "service names", rtNames(after.ServiceNames()), []string{"api", "consul"})
	rtEqual(t, "node services", rtServiceIDs(after.NodeServices(rtNode)), []string{"consul", "web-1"})
	if n := after.ServiceIndex("web"); n <= before.ServiceIndex("web") {
		t.Fatalf("old name's index %d did not move past %d", n, before.ServiceIndex("web"))
	}
	if n := after.ServiceIndex("api"); n != after.Index() {
		t.Fatalf("new name's index %d, snapshot %d", n, after.Index())
	}
	if c := rtCheck(t, after, "web-1", "service:web-1"); c.ServiceName != "api" {
		t.Fatalf("check still names service %q", c.ServiceName)
	}
	if _, _, n := after.Counts(); n != 2 {
		t.Fatalf("%d checks, want serfHealth and service:web-1", n)
	}
}

func TestServiceIndexPerName(t *testing.T) {
	r := rtNew(t, "")
	if n := r.Snapshot().ServiceIndex("never"); n != 1 {
		t.Fatalf("ServiceIndex of an unknown name = %d, want 1", n)
	}
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":80}`)
	rtReg(t, r, SourceAPI, `{"ID":"db-1","Name":"db","Port":5432,"Check":{"TTL":"10s"}}`)
	snap := r.Snapshot()
	web, db, consul := snap.ServiceIndex("web"), snap.ServiceIndex("db"), snap.ServiceIndex("consul")
	if web <= 1 || db != snap.Index() || web >= db {
		t.Fatalf("indexes web %d db %d snapshot %d", web, db, snap.Index())
	}

	// Changes to db leave web (and consul) alone.
	for _, tc := range []struct {
		what string
		f    func() error
	}{
		{"register db-2", func() error {
			s, cs := rtBuild(t, `{"ID":"db-2","Name":"db","Port":5433}`)
			return r.RegisterService(s, cs, SourceAPI)
		}},
		{"update db check", func() error { return r.UpdateCheck("service:db-1", StatusPassing, "") }},
		{"standalone db check", func() error {
			return r.RegisterCheck(Check{CheckID: "db-extra", Name: "x", ServiceID: "db-1", Status: StatusPassing}, SourceAPI)
		}},
		{"remove standalone db check", func() error { return r.DeregisterCheck("db-extra") }},
		{"deregister db-2", func() error { return r.DeregisterService("db-2") }},
	} {
		if err := tc.f(); err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		s := r.Snapshot()
		if s.ServiceIndex("web") != web || s.ServiceIndex("consul") != consul {
			t.Fatalf("%s moved web %d->%d or consul %d->%d", tc.what, web, s.ServiceIndex("web"), consul, s.ServiceIndex("consul"))
		}
		if s.ServiceIndex("db") != s.Index() || s.Index() <= db {
			t.Fatalf("%s: db index %d, snapshot %d, before %d", tc.what, s.ServiceIndex("db"), s.Index(), db)
		}
		db = s.Index()
	}

	// A deregistered name keeps an index past any answer given for it.
	rtDereg(t, r, "web-1")
	gone := r.Snapshot().ServiceIndex("web")
	if gone <= web || gone != r.Snapshot().Index() {
		t.Fatalf("deregistered name's index %d, before %d", gone, web)
	}
	rtReg(t, r, SourceAPI, `{"ID":"db-3","Name":"db","Port":5434}`)
	if n := r.Snapshot().ServiceIndex("web"); n != gone {
		t.Fatalf("index of a gone name moved from %d to %d", gone, n)
	}

	// A node-level check is part of every instance on the node.
	before := r.Snapshot()
	if err := r.RegisterCheck(Check{CheckID: "mem", Name: "mem", Status: StatusPassing}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	after := r.Snapshot()
	for _, name := range []string{"db", "consul"} {
		if after.ServiceIndex(name) != after.Index() {
			t.Fatalf("node check did not move %s: %d, snapshot %d", name, after.ServiceIndex(name), after.Index())
		}
	}
	if after.ServiceIndex("web") != before.ServiceIndex("web") {
		t.Fatal("node check moved a name with no instances")
	}
}

func TestReaders(t *testing.T) {
	r := rtNew(t, "")
	rtReg(t, r, SourceAPI, `{"ID":"web-2","Name":"web","Tags":["b","a"],"Port":81,"Check":{"TTL":"10s"}}`)
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["a","c"],"Port":80,"Check":{"TTL":"10s","Status":"passing"}}`)
	rtReg(t, r, SourceConfig, `{"Name":"db","Port":5432}`)
	snap := r.Snapshot()

	rtEqual(t, "NodeServices", rtServiceIDs(snap.NodeServices(rtNode)), []string{"consul", "db", "web-1", "web-2"})
	if len(snap.NodeServices("other")) != 0 {
		t.Fatal("services on an unknown node")
	}
	if e, ok := snap.NodeService(rtNode, "web-1"); !ok || e.Port != 80 || e.Node != rtNode {
		t.Fatalf("NodeService(web-1) = %+v, %v", e, ok)
	}
	if _, ok := snap.NodeService(rtNode, "web"); ok {
		t.Fatal("NodeService found a service by name")
	}
	if _, ok := snap.NodeService("other", "web-1"); ok {
		t.Fatal("NodeService found a service on an unknown node")
	}

	ins := snap.ServiceInstances("web")
	rtEqual(t, "web instances", rtInstanceIDs(ins), []string{"web-1", "web-2"})
	rtEqual(t, "web-1 checks", rtCheckIDs(ins[0].Checks), []string{SerfCheckID, "service:web-1"})
	rtEqual(t, "web-2 checks", rtCheckIDs(ins[1].Checks), []string{SerfCheckID, "service:web-2"})
	if ins[0].Status() != StatusPassing || ins[1].Status() != StatusCritical {
		t.Fatalf("statuses %s %s, want passing critical", ins[0].Status(), ins[1].Status())
	}
	if ins[0].Node.Name != rtNode || ins[0].Node.Address != "10.0.0.1" {
		t.Fatalf("instance node = %+v", ins[0].Node)
	}
	if got := snap.ServiceInstances("we"); len(got) != 0 {
		t.Fatalf("prefix of a name matched %v", rtInstanceIDs(got))
	}
	rtEqual(t, "db instances", rtInstanceIDs(snap.ServiceInstances("db")), []string{"db"})

	rtEqual(t, "ServiceNames", snap.ServiceNames(), []NameTags{
		{Name: "consul", Tags: []string{}},
		{Name: "db", Tags: []string{}},
		{Name: "web", Tags: []string{"a", "b", "c"}},
	})
	// Computing the union must not reorder an instance's own tags.
	if e, _ := snap.NodeService(rtNode, "web-2"); !slices.Equal(e.Tags, []string{"b", "a"}) {
		t.Fatalf("web-2 tags became %v", e.Tags)
	}

	rtEqual(t, "node-level checks", rtCheckIDs(snap.NodeChecks(rtNode, "")), []string{SerfCheckID})
	rtEqual(t, "all checks", rtCheckIDs(snap.AllNodeChecks(rtNode)), []string{SerfCheckID, "service:web-1", "service:web-2"})
	var seen []string
	snap.Checks(func(c *CheckEntry) bool {
		seen = append(seen, c.CheckID)
		return len(seen) < 2
	})
	rtEqual(t, "Checks stops when told", seen, []string{SerfCheckID, "service:web-1"})
	if nn, ns, nc := snap.Counts(); nn != 1 || ns != 4 || nc != 3 {
		t.Fatalf("Counts = %d, %d, %d, want 1, 4, 3", nn, ns, nc)
	}
	if ns := snap.Nodes(); len(ns) != 1 || ns[0].Name != rtNode {
		t.Fatalf("Nodes = %v", ns)
	}
	if src, ok := r.LocalSource("db"); !ok || src != SourceConfig {
		t.Fatalf("LocalSource(db) = %q, %v", src, ok)
	}
	if _, ok := r.LocalSource("nope"); ok {
		t.Fatal("LocalSource of an unknown ID")
	}
}

func TestUnknownIDs(t *testing.T) {
	r := rtNew(t, "")
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":80}`)
	snap := r.Snapshot()
	for what, err := range map[string]error{
		"DeregisterService": r.DeregisterService("nope"),
		"DeregisterCheck":   r.DeregisterCheck("nope"),
		"UpdateCheck":       r.UpdateCheck("nope", StatusPassing, ""),
		"UpdateCheck serf":  r.UpdateCheck(SerfCheckID, StatusCritical, ""),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: err = %v, want ErrNotFound", what, err)
		}
	}
	if r.Snapshot() != snap || rtClosed(snap) {
		t.Fatal("a failed call published a snapshot")
	}
}

func TestBuildCheckIDs(t *testing.T) {
	for _, tc := range []struct {
		js     string
		ids    []string
		status []Status
	}{
		{`{"ID":"web-1","Name":"web","Check":{"TTL":"10s"}}`, []string{"service:web-1"}, []Status{StatusCritical}},
		{`{"Name":"web","Check":{"TTL":"10s"}}`, []string{"service:web"}, []Status{StatusCritical}},
		{`{"ID":"web-1","Name":"web","Checks":[{"TTL":"10s","Status":"passing"}]}`, []string{"service:web-1"}, []Status{StatusPassing}},
		{`{"ID":"web-1","Name":"web","Checks":[{"TTL":"10s"},{"TTL":"10s","Status":"warning"}]}`,
			[]string{"service:web-1:1", "service:web-1:2"}, []Status{StatusCritical, StatusWarning}},
		{`{"ID":"web-1","Name":"web","Check":{"TTL":"10s","Status":"passing"},"Checks":[{"TTL":"10s"},{"TCP":"localhost:80","Interval":"10s","Status":"critical"}]}`,
			[]string{"service:web-1:1", "service:web-1:2", "service:web-1:3"}, []Status{StatusPassing, StatusCritical, StatusCritical}},
		{`{"ID":"web-1","Name":"web","Checks":[{"TTL":"10s","CheckID":"mine"},{"TTL":"10s","ID":"also-mine"},{"TTL":"10s"}]}`,
			[]string{"mine", "also-mine", "service:web-1:3"}, []Status{StatusCritical, StatusCritical, StatusCritical}},
	} {
		t.Run(tc.js, func(t *testing.T) {
			s, cs := rtBuild(t, tc.js)
			var ids []string
			var sts []Status
			for _, c := range cs {
				ids = append(ids, c.CheckID)
				sts = append(sts, c.Status)
				if c.ServiceID != s.ID || c.ServiceName != s.Name {
					t.Errorf("check %s belongs to %q/%q", c.CheckID, c.ServiceID, c.ServiceName)
				}
				if c.Name != "Service '"+s.Name+"' check" {
					t.Errorf("check %s default name %q", c.CheckID, c.Name)
				}
			}
			rtEqual(t, "check IDs", ids, tc.ids)
			rtEqual(t, "statuses", sts, tc.status)

			// And the registry keeps them as built.
			r := rtNew(t, "")
			if err := r.RegisterService(s, cs, SourceAPI); err != nil {
				t.Fatal(err)
			}
			got := rtCheckIDs(r.Snapshot().NodeChecks(rtNode, s.ID))
			want := slices.Clone(tc.ids)
			slices.Sort(want)
			rtEqual(t, "registered checks", got, want)
		})
	}
}

func TestAggregate(t *testing.T) {
	P, W, C, M := StatusPassing, StatusWarning, StatusCritical, StatusMaintenance
	for _, tc := range []struct {
		in   []Status
		want Status
	}{
		{nil, P},
		{[]Status{P}, P},
		{[]Status{P, P}, P},
		{[]Status{P, W}, W},
		{[]Status{W, P}, W},
		{[]Status{W, C, P}, C},
		{[]Status{C, W}, C},
		{[]Status{M}, C},
		{[]Status{P, M, W}, C},
		{[]Status{"bogus"}, C},
	} {
		var cs []*CheckEntry
		for i, s := range tc.in {
			cs = append(cs, &CheckEntry{Check: Check{CheckID: fmt.Sprint(i), Status: s}})
		}
		if got := (Instance{Checks: cs}).Status(); got != tc.want {
			t.Errorf("Status(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestUpdateCheck(t *testing.T) {
	r := rtNew(t, "")
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["t"],"Port":80,"Check":{"TTL":"10s"}}`)
	rtReg(t, r, SourceAPI, `{"ID":"db-1","Name":"db","Port":5432}`)
	s0 := r.Snapshot()
	c0 := rtCheck(t, s0, "web-1", "service:web-1")
	if c0.Status != StatusCritical || s0.ServiceInstances("web")[0].Status() != StatusCritical {
		t.Fatalf("new check is %s, want critical", c0.Status)
	}
	dbIdx := s0.ServiceIndex("db")

	type step struct {
		status  Status
		output  string
		publish bool
		agg     Status
	}
	prev := s0
	for i, st := range []step{
		{StatusPassing, "ok", true, StatusPassing},
		{StatusPassing, "ok", false, StatusPassing},
		{StatusPassing, "still ok", true, StatusPassing},
		{StatusWarning, "slow", true, StatusWarning},
		{StatusMaintenance, "", true, StatusCritical},
		{StatusCritical, "down", true, StatusCritical},
		{StatusCritical, "down", false, StatusCritical},
	} {
		if err := r.UpdateCheck("service:web-1", st.status, st.output); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		next := r.Snapshot()
		if !st.publish {
			if next != prev || rtClosed(prev) {
				t.Fatalf("step %d: an unchanged check published snapshot %d", i, next.Index())
			}
			continue
		}
		if next.Index() <= prev.Index() || !rtClosed(prev) || rtClosed(next) {
			t.Fatalf("step %d: no new snapshot (%d -> %d)", i, prev.Index(), next.Index())
		}
		c := rtCheck(t, next, "web-1", "service:web-1")
		if c.Status != st.status || c.Output != st.output {
			t.Fatalf("step %d: check is %s %q, want %s %q", i, c.Status, c.Output, st.status, st.output)
		}
		if c.CreateIndex != c0.CreateIndex || c.ModifyIndex != next.Index() {
			t.Fatalf("step %d: check indexes %d/%d, snapshot %d, created %d", i, c.CreateIndex, c.ModifyIndex, next.Index(), c0.CreateIndex)
		}
		if !slices.Equal(c.ServiceTags, []string{"t"}) || c.ServiceName != "web" {
			t.Fatalf("step %d: check lost its service: %+v", i, c.Check)
		}
		if got := next.ServiceInstances("web")[0].Status(); got != st.agg {
			t.Fatalf("step %d: instance status %s, want %s", i, got, st.agg)
		}
		if next.ServiceIndex("web") != next.Index() || next.ServiceIndex("db") != dbIdx {
			t.Fatalf("step %d: web index %d db index %d, snapshot %d", i, next.ServiceIndex("web"), next.ServiceIndex("db"), next.Index())
		}
		lc := r.LocalChecks()
		if len(lc) != 1 || lc[0].Status != st.status || lc[0].Output != st.output {
			t.Fatalf("step %d: LocalChecks = %+v", i, lc)
		}
		prev = next
	}
}

func TestChecks(t *testing.T) {
	r := rtNew(t, "")
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["v1"],"Port":80,"Check":{"TTL":"10s","Status":"passing"}}`)
	rtReg(t, r, SourceAPI, `{"ID":"db-1","Name":"db","Port":5432}`)
	snap := r.Snapshot()

	var fe *FieldError
	err := r.RegisterCheck(Check{CheckID: "c", Name: "c", ServiceID: "nope", Status: StatusPassing}, SourceAPI)
	if !errors.As(err, &fe) || fe.Field != "ServiceID" {
		t.Fatalf("check on unknown service: err = %v, want FieldError on ServiceID", err)
	}
	err = r.RegisterCheck(Check{CheckID: "service:web-1", Name: "c", Status: StatusPassing}, SourceAPI)
	if !errors.As(err, &fe) || fe.Field != "CheckID" {
		t.Fatalf("overwrite a service's check: err = %v, want FieldError on CheckID", err)
	}
	if err := r.DeregisterCheck("service:web-1"); !errors.Is(err, ErrProtected) {
		t.Fatalf("deregister a service's check: err = %v, want ErrProtected", err)
	}
	s, cs := rtBuild(t, `{"ID":"db-1","Name":"db","Port":5432,"Check":{"CheckID":"service:web-1","TTL":"10s"}}`)
	if err := r.RegisterService(s, cs, SourceAPI); !errors.As(err, &fe) || fe.Field != "CheckID" {
		t.Fatalf("service taking another's check ID: err = %v, want FieldError on CheckID", err)
	}
	if r.Snapshot() != snap {
		t.Fatal("a refused change published a snapshot")
	}
	if _, ok := snap.NodeService(rtNode, "db-1"); !ok {
		t.Fatal("refused registration removed db-1")
	}

	// A node-level check bears on every instance of the node.
	if err := r.RegisterCheck(Check{CheckID: "mem", Name: "mem", Status: StatusWarning}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	snap = r.Snapshot()
	rtEqual(t, "node checks", rtCheckIDs(snap.NodeChecks(rtNode, "")), []string{"mem", SerfCheckID})
	for _, name := range []string{"web", "db", "consul"} {
		if st := snap.ServiceInstances(name)[0].Status(); st != StatusWarning {
			t.Fatalf("%s is %s with a warning node check", name, st)
		}
	}

	// A standalone check of a service shows the service's current tags,
	// survives its re-registration, and leaves with it.
	if err := r.RegisterCheck(Check{CheckID: "extra", Name: "extra", ServiceID: "web-1", Status: StatusPassing}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	c := rtCheck(t, r.Snapshot(), "web-1", "extra")
	if c.ServiceName != "web" || !slices.Equal(c.ServiceTags, []string{"v1"}) {
		t.Fatalf("extra = %+v", c.Check)
	}
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["v2"],"Port":80}`)
	snap = r.Snapshot()
	rtEqual(t, "web-1 checks", rtCheckIDs(snap.NodeChecks(rtNode, "web-1")), []string{"extra"})
	if c := rtCheck(t, snap, "web-1", "extra"); !slices.Equal(c.ServiceTags, []string{"v2"}) {
		t.Fatalf("extra shows tags %v after re-registration", c.ServiceTags)
	}
	// Moving a standalone check from one service to another.
	if err := r.RegisterCheck(Check{CheckID: "extra", Name: "extra", ServiceID: "db-1", Status: StatusPassing}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	snap = r.Snapshot()
	if len(snap.NodeChecks(rtNode, "web-1")) != 0 {
		t.Fatalf("moved check still on web-1: %v", rtCheckIDs(snap.NodeChecks(rtNode, "web-1")))
	}
	if c := rtCheck(t, snap, "db-1", "extra"); c.ServiceName != "db" {
		t.Fatalf("moved check = %+v", c.Check)
	}
	rtDereg(t, r, "db-1")
	snap = r.Snapshot()
	rtEqual(t, "all checks", rtCheckIDs(snap.AllNodeChecks(rtNode)), []string{"mem", SerfCheckID})
	if err := r.UpdateCheck("extra", StatusCritical, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("check of a deregistered service still known: %v", err)
	}

	if err := r.DeregisterCheck("mem"); err != nil {
		t.Fatal(err)
	}
	snap = r.Snapshot()
	rtEqual(t, "node checks", rtCheckIDs(snap.NodeChecks(rtNode, "")), []string{SerfCheckID})
	if st := snap.ServiceInstances("web")[0].Status(); st != StatusPassing {
		t.Fatalf("web is %s after the node check left", st)
	}
}

func rtServicesDir(dir string) string { return filepath.Join(dir, "services") }

func rtFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) { // made at the first file written there
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() { // checks/state
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

func TestPersistRestart(t *testing.T) {
	dir := t.TempDir()
	r1 := rtNew(t, dir)
	web, webChecks := rtReg(t, r1, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["a"],"Port":80,"Meta":{"my_key":"v"},
		"TaggedAddresses":{"lan":{"Address":"10.0.0.9","Port":8080}},"Weights":{"Passing":3,"Warning":1},
		"Checks":[{"HTTP":"http://127.0.0.1:80/health","Interval":"10s","Status":"passing"},{"TTL":"30s"}]}`)
	rtReg(t, r1, SourceAPI, `{"ID":"db-1","Name":"db","Port":5432}`)
	rtReg(t, r1, SourceConfig, `{"ID":"cfg-1","Name":"cfg","Port":1}`)
	rtReg(t, r1, SourceAPI, `{"ID":"taken","Name":"taken","Port":2}`)
	rtReg(t, r1, SourceConfig, `{"ID":"taken","Name":"taken","Port":3}`) // config takes over an API ID
	if err := r1.RegisterCheck(Check{CheckID: "mem", Name: "mem", Status: StatusPassing, Definition: CheckDefinition{TTL: Duration(1e10)}}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if err := r1.RegisterCheck(Check{CheckID: "extra", Name: "extra", ServiceID: "web-1", Status: StatusCritical}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if err := r1.RegisterCheck(Check{CheckID: "gone", Name: "gone", Status: StatusCritical}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if err := r1.RegisterCheck(Check{CheckID: "from-config", Name: "c", Status: StatusCritical}, SourceConfig); err != nil {
		t.Fatal(err)
	}
	if err := r1.DeregisterCheck("gone"); err != nil {
		t.Fatal(err)
	}
	rtDereg(t, r1, "db-1")

	r2 := rtNew(t, dir)
	if r2.Config().NodeID != r1.Config().NodeID || r2.Self().ID != r1.Self().ID {
		t.Fatalf("node ID changed across restart: %q -> %q", r1.Config().NodeID, r2.Config().NodeID)
	}
	snap := r2.Snapshot()
	rtEqual(t, "services after restart", rtServiceIDs(snap.NodeServices(rtNode)), []string{"consul", "web-1"})
	got, _ := snap.NodeService(rtNode, "web-1")
	rtEqual(t, "web-1 after restart", got.Service, web)
	if src, _ := r2.LocalSource("web-1"); src != SourceAPI {
		t.Fatalf("web-1 source %q after restart", src)
	}
	rtEqual(t, "web-1 checks", rtCheckIDs(snap.NodeChecks(rtNode, "web-1")), []string{"extra", "service:web-1:1", "service:web-1:2"})
	for _, want := range webChecks {
		c := rtCheck(t, snap, "web-1", want.CheckID)
		want.ServiceTags = []string{"a"}
		rtEqual(t, "check "+want.CheckID, c.Check, want)
	}
	if c := rtCheck(t, snap, "web-1", "extra"); c.ServiceName != "web" || !slices.Equal(c.ServiceTags, []string{"a"}) {
		t.Fatalf("extra after restart = %+v", c.Check)
	}
	rtEqual(t, "node checks", rtCheckIDs(snap.NodeChecks(rtNode, "")), []string{"mem", SerfCheckID})
	if c := rtCheck(t, snap, "", "mem"); c.Definition.TTL != Duration(1e10) {
		t.Fatalf("mem after restart = %+v", c.Check)
	}
	// The restarted registry can still remove what it loaded.
	if err := r2.DeregisterCheck("service:web-1:1"); !errors.Is(err, ErrProtected) {
		t.Fatalf("loaded service check not owned by its service: %v", err)
	}
	rtDereg(t, r2, "web-1")
	if err := r2.DeregisterCheck("mem"); err != nil {
		t.Fatal(err)
	}

	r3 := rtNew(t, dir)
	snap = r3.Snapshot()
	rtEqual(t, "services after second restart", rtServiceIDs(snap.NodeServices(rtNode)), []string{"consul"})
	rtEqual(t, "checks after second restart", rtCheckIDs(snap.AllNodeChecks(rtNode)), []string{SerfCheckID})
	if fs := rtFiles(t, rtServicesDir(dir)); len(fs) != 0 {
		t.Fatalf("files left in services/: %v", fs)
	}
	if fs := rtFiles(t, filepath.Join(dir, "checks")); len(fs) != 0 {
		t.Fatalf("files left in checks/: %v", fs)
	}
}

// A standalone check whose ID a later registration of its service takes over
// belongs to that registration, before and after a restart.
func TestPersistCheckTakenOver(t *testing.T) {
	dir := t.TempDir()
	r := rtNew(t, dir)
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":80}`)
	if err := r.RegisterCheck(Check{CheckID: "taken", Name: "x", ServiceID: "web-1", Status: StatusPassing}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":80,"Check":{"CheckID":"taken","TTL":"10s"}}`)
	if err := r.DeregisterCheck("taken"); !errors.Is(err, ErrProtected) {
		t.Fatalf("before restart: DeregisterCheck = %v, want ErrProtected", err)
	}
	r2 := rtNew(t, dir)
	if err := r2.DeregisterCheck("taken"); !errors.Is(err, ErrProtected) {
		t.Fatalf("after restart: DeregisterCheck = %v, want ErrProtected", err)
	}
	c := rtCheck(t, r2.Snapshot(), "web-1", "taken")
	if c.Definition.TTL != Duration(10e9) {
		t.Fatalf("after restart the check is %+v", c.Check)
	}
	// Re-registered without it, it is gone for good.
	rtReg(t, r2, SourceAPI, `{"ID":"web-1","Name":"web","Port":80}`)
	r3 := rtNew(t, dir)
	if cs := r3.Snapshot().NodeChecks(rtNode, "web-1"); len(cs) != 0 {
		t.Fatalf("checks back after restart: %v", rtCheckIDs(cs))
	}
}

func TestPersistCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		sub  string // services, checks, or "" for the node-id file
		data string
	}{
		{"service not JSON", "services", "{not json"},
		{"service truncated", "services", `{"Service":{"ID":"web-1"`},
		{"service without ID", "services", `{"Service":{"Name":"web"}}`},
		{"service wrong type", "services", `{"Service":{"ID":"web-1","Name":"web","Port":"80"}}`},
		{"check not JSON", "checks", "\x00\x01"},
		{"check without ID", "checks", `{"Check":{"Name":"mem"}}`},
		{"node-id not a UUID", "", "not-a-uuid\n"},
		{"node-id empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r := rtNew(t, dir)
			rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":80}`)
			var path string
			if tc.sub == "" {
				path = filepath.Join(dir, "node-id")
			} else {
				path = filepath.Join(dir, tc.sub, "0123abcd.json")
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil { // checks/ is made at the first check written
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := New(rtConfig(dir))
			if err == nil {
				t.Fatalf("New accepted a corrupt %s", path)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name %s", err, path)
			}
		})
	}
}

func TestPersistTmpIgnored(t *testing.T) {
	dir := t.TempDir()
	r := rtNew(t, dir)
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":80}`)
	leftovers := []string{
		filepath.Join(dir, "services", "0123abcd.json.tmp"),
		filepath.Join(dir, "checks", "4567cdef.json.tmp"),
	}
	for _, p := range leftovers {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{torn"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	other := filepath.Join(dir, "services", "README")
	if err := os.WriteFile(other, []byte("not a state file"), 0o600); err != nil {
		t.Fatal(err)
	}
	r2 := rtNew(t, dir)
	rtEqual(t, "services", rtServiceIDs(r2.Snapshot().NodeServices(rtNode)), []string{"consul", "web-1"})
	for _, p := range leftovers {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover %s not removed: %v", p, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("unrelated file removed: %v", err)
	}
}

func TestPersistNotWrittenForConfig(t *testing.T) {
	dir := t.TempDir()
	r := rtNew(t, dir)
	rtReg(t, r, SourceConfig, `{"ID":"cfg-1","Name":"cfg","Port":1,"Check":{"TTL":"10s"}}`)
	if err := r.RegisterCheck(Check{CheckID: "cfg-check", Name: "c", Status: StatusCritical}, SourceConfig); err != nil {
		t.Fatal(err)
	}
	if fs := rtFiles(t, rtServicesDir(dir)); len(fs) != 0 {
		t.Fatalf("config service persisted: %v", fs)
	}
	if fs := rtFiles(t, filepath.Join(dir, "checks")); len(fs) != 0 {
		t.Fatalf("config check persisted: %v", fs)
	}
}

func TestSnapshotIsolation(t *testing.T) {
	r := rtNew(t, "")
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["a"],"Port":80,"Check":{"TTL":"10s"}}`)
	rtReg(t, r, SourceAPI, `{"ID":"db-1","Name":"db","Port":5432}`)
	// Enough services that the trees have inner nodes to share.
	for i := range 200 {
		rtReg(t, r, SourceAPI, fmt.Sprintf(`{"ID":"x-%03d","Name":"x-%d","Port":%d}`, i, i%7, 1000+i))
	}
	old := r.Snapshot()
	oldWeb, _ := old.NodeService(rtNode, "web-1")
	oldIdx, oldWebIdx := old.Index(), old.ServiceIndex("web")
	on, os_, oc := old.Counts()
	oldNames := old.ServiceNames()
	oldX := rtInstanceIDs(old.ServiceInstances("x-3"))

	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Tags":["b"],"Port":81,"Check":{"TTL":"10s"}}`)
	if err := r.UpdateCheck("service:web-1", StatusPassing, "ok"); err != nil {
		t.Fatal(err)
	}
	rtDereg(t, r, "db-1")
	rtReg(t, r, SourceAPI, `{"ID":"new-1","Name":"new","Port":1}`)
	for i := 0; i < 200; i += 3 {
		rtDereg(t, r, fmt.Sprintf("x-%03d", i))
	}
	if err := r.RegisterCheck(Check{CheckID: "mem", Name: "mem", Status: StatusCritical}, SourceAPI); err != nil {
		t.Fatal(err)
	}

	// The old snapshot is as it was.
	if old.Index() != oldIdx || old.ServiceIndex("web") != oldWebIdx {
		t.Fatalf("old snapshot's indexes moved")
	}
	if n, s, c := old.Counts(); n != on || s != os_ || c != oc {
		t.Fatalf("old counts %d/%d/%d, were %d/%d/%d", n, s, c, on, os_, oc)
	}
	w, _ := old.NodeService(rtNode, "web-1")
	if w != oldWeb || w.Port != 80 || !slices.Equal(w.Tags, []string{"a"}) {
		t.Fatalf("old web-1 = %+v", w.Service)
	}
	if c := rtCheck(t, old, "web-1", "service:web-1"); c.Status != StatusCritical || c.Output != "" {
		t.Fatalf("old check = %+v", c.Check)
	}
	if _, ok := old.NodeService(rtNode, "db-1"); !ok || len(old.ServiceInstances("db")) != 1 {
		t.Fatal("db-1 gone from the old snapshot")
	}
	if len(old.ServiceInstances("new")) != 0 {
		t.Fatal("new-1 appeared in the old snapshot")
	}
	if st := old.ServiceInstances("web")[0].Status(); st != StatusCritical {
		t.Fatalf("old web status %s", st)
	}
	rtEqual(t, "old node checks", rtCheckIDs(old.NodeChecks(rtNode, "")), []string{SerfCheckID})
	rtEqual(t, "old names", old.ServiceNames(), oldNames)
	rtEqual(t, "old x-3", rtInstanceIDs(old.ServiceInstances("x-3")), oldX)

	// And the new one has every change.
	cur := r.Snapshot()
	w, _ = cur.NodeService(rtNode, "web-1")
	if w.Port != 81 || rtCheck(t, cur, "web-1", "service:web-1").Status != StatusPassing {
		t.Fatalf("new web-1 = %+v", w.Service)
	}
	if _, ok := cur.NodeService(rtNode, "db-1"); ok {
		t.Fatal("db-1 still in the new snapshot")
	}
	if _, s, _ := cur.Counts(); s != os_-1+1-67 {
		t.Fatalf("new snapshot holds %d services, want %d", s, os_-67)
	}
}

func TestConcurrent(t *testing.T) {
	r := rtNew(t, "")
	const writers, perWriter, readers, waiters = 6, 150, 3, 3
	stop := make(chan struct{})
	var wg, rwg sync.WaitGroup

	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range perWriter {
				id := fmt.Sprintf("w%d-%d", w, j)
				name := fmt.Sprintf("svc-%d", j%5)
				s := Service{ID: id, Name: name, Tags: []string{"t1"}, Port: 1000 + j, Weights: Weights{1, 1}}
				c := Check{CheckID: "service:" + id, Name: "c", Status: StatusCritical, ServiceID: id, ServiceName: name, Definition: CheckDefinition{TTL: Duration(1e10)}}
				if err := r.RegisterService(s, []Check{c}, SourceAPI); err != nil {
					t.Errorf("register %s: %v", id, err)
					return
				}
				if err := r.UpdateCheck(c.CheckID, StatusPassing, "ok"); err != nil {
					t.Errorf("update %s: %v", id, err)
					return
				}
				s.Tags = []string{"t2"}
				c.Status = StatusPassing
				if err := r.RegisterService(s, []Check{c}, SourceAPI); err != nil {
					t.Errorf("re-register %s: %v", id, err)
					return
				}
				if j%2 == 0 {
					if err := r.DeregisterService(id); err != nil {
						t.Errorf("deregister %s: %v", id, err)
						return
					}
				}
			}
		}()
	}
	for range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			var last uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				snap := r.Snapshot()
				if snap.Index() < last {
					t.Errorf("index went back from %d to %d", last, snap.Index())
					return
				}
				last = snap.Index()
				_, ns, nc := snap.Counts()
				if got := len(snap.NodeServices(rtNode)); got != ns {
					t.Errorf("snapshot %d: %d node services, %d services", snap.Index(), got, ns)
					return
				}
				if got := len(snap.AllNodeChecks(rtNode)); got != nc {
					t.Errorf("snapshot %d: %d node checks, %d checks", snap.Index(), got, nc)
					return
				}
				total := 0
				for _, nt := range snap.ServiceNames() {
					ins := snap.ServiceInstances(nt.Name)
					total += len(ins)
					for _, in := range ins {
						// Every instance but the agent's has its own check.
						if in.Service.ID != AgentServiceID && len(in.Checks) != 2 {
							t.Errorf("snapshot %d: %s has checks %v", snap.Index(), in.Service.ID, rtCheckIDs(in.Checks))
							return
						}
						if idx := snap.ServiceIndex(nt.Name); idx < in.Service.ModifyIndex || idx > snap.Index() {
							t.Errorf("snapshot %d: ServiceIndex(%s) = %d, instance modified at %d", snap.Index(), nt.Name, idx, in.Service.ModifyIndex)
							return
						}
					}
				}
				if total != ns {
					t.Errorf("snapshot %d: %d instances by name, %d services", snap.Index(), total, ns)
					return
				}
			}
		}()
	}
	for range waiters {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			snap := r.Snapshot()
			for {
				select {
				case <-snap.Changed():
					next := r.Snapshot()
					if next.Index() <= snap.Index() {
						t.Errorf("woken for snapshot %d by %d", snap.Index(), next.Index())
						return
					}
					snap = next
				case <-stop:
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	rwg.Wait()
	if t.Failed() {
		return
	}

	snap := r.Snapshot()
	want := []string{AgentServiceID}
	for w := range writers {
		for j := 1; j < perWriter; j += 2 {
			want = append(want, fmt.Sprintf("w%d-%d", w, j))
		}
	}
	slices.Sort(want)
	rtEqual(t, "services left", rtServiceIDs(snap.NodeServices(rtNode)), want)
	for _, e := range snap.NodeServices(rtNode) {
		if e.ID == AgentServiceID {
			continue
		}
		if c := rtCheck(t, snap, e.ID, "service:"+e.ID); c.Status != StatusPassing || !slices.Equal(c.ServiceTags, []string{"t2"}) {
			t.Fatalf("%s check = %+v", e.ID, c.Check)
		}
	}
	if want := uint64(1 + writers*perWriter*3 + writers*perWriter/2); snap.Index() != want {
		t.Fatalf("index %d after %d changes, want %d", snap.Index(), want-1, want)
	}
}

func TestDefinitionValidation(t *testing.T) {
	bad := []struct {
		js    string
		field string
	}{
		{`{}`, "Name"},
		{`{"Name":""}`, "Name"},
		{`{"Name":"a b"}`, "Name"},
		{`{"Name":"` + strings.Repeat("n", 300) + `"}`, "Name"},
		{`{"Name":"web","ID":"x\ty"}`, "ID"},
		{`{"Name":"web","Kind":"connect-proxy"}`, "Kind"},
		{`{"Name":"web","Tags":["ok","bad\u0001"]}`, "Tags[1]"},
		{`{"Name":"web","Address":"not an address"}`, "Address"},
		{`{"Name":"web","Port":0}`, "Port"},
		{`{"Name":"web","Port":-1}`, "Port"},
		{`{"Name":"web","Port":65536}`, "Port"},
		{`{"Name":"web","Port":"80"}`, "Port"},
		{`{"name":"web","port":"80"}`, "Port"},
		{`{"Name":"web","Meta":{"consul-version":"1"}}`, "Meta"},
		{`{"Name":"web","Meta":{"a b":"1"}}`, "Meta"},
		{`{"Name":"web","Meta":{"":"1"}}`, "Meta"},
		{`{"Name":"web","Meta":{"k":"` + strings.Repeat("v", 513) + `"}}`, "Meta"},
		{`{"Name":"web","Weights":{"Passing":0,"Warning":1}}`, "Weights.Passing"},
		{`{"Name":"web","Weights":{"Passing":1,"Warning":-1}}`, "Weights.Warning"},
		{`{"Name":"web","Weights":{"Passing":"x"}}`, "Weights.Passing"},
		{`{"Name":"web","TaggedAddresses":{"x":{"Address":"10.0.0.1","Port":70000}}}`, "TaggedAddresses.x.Port"},
		{`{"Name":"web","TaggedAddresses":{"lan_ipv4":{"Address":"bad address","Port":80}}}`, "TaggedAddresses.lan_ipv4.Address"},
		{`{"Name":"web","Check":{"Notes":"no type"}}`, "Check"},
		{`{"Name":"web","Check":{"HTTP":"http://localhost/"}}`, "Check.Interval"},
		{`{"Name":"web","Check":{"TCP":"localhost:80"}}`, "Check.Interval"},
		{`{"Name":"web","Check":{"TTL":"10s","HTTP":"http://localhost/","Interval":"10s"}}`, "Check"},
		{`{"Name":"web","Check":{"TTL":"ten seconds"}}`, "Check.TTL"},
		{`{"Name":"web","Check":{"TTL":"-10s"}}`, "Check.TTL"},
		{`{"Name":"web","Check":{"TTL":"10s","Timeout":true}}`, "Check.Timeout"},
		{`{"Name":"web","Check":{"TTL":"10s","DeregisterCriticalServiceAfter":"x"}}`, "Check.DeregisterCriticalServiceAfter"},
		{`{"Name":"web","Check":{"TTL":"10s","Status":"maintenance"}}`, "Check.Status"},
		{`{"Name":"web","Check":{"TTL":"10s","CheckID":"a\nb"}}`, "Check.CheckID"},
		{`{"Name":"web","Check":{"TCP":"nohostport","Interval":"10s"}}`, "Check.TCP"},
		{`{"Name":"web","Check":{"TTL":"10s","FailuresBeforeCritical":-1}}`, "Check.FailuresBeforeCritical"},
		{`{"Name":"web","Checks":[{"TTL":"10s"},{"HTTP":"ftp://localhost/","Interval":"10s"}]}`, "Checks[1].HTTP"},
		{`{"Name":"web","Checks":[{"TTL":"10s"},{"TTL":"10s","Interval":"5.5"}]}`, "Checks[1].Interval"},
		{`{"Name":"web","Checks":[{"TTL":"10s","CheckID":"a"},{"TTL":"10s","CheckID":"a"}]}`, "Checks[1].CheckID"},
		{`{"Name":"web","Check":{"TTL":"10s","CheckID":"service:web:2"},"Checks":[{"TTL":"10s"}]}`, "Checks[0].CheckID"},
		{`{"Name":"web","Checks":{"TTL":"10s"}}`, "Checks"},
		{`{"Name":"web","Tags":"a"}`, "Tags"},
	}
	for _, tc := range bad {
		t.Run("bad/"+tc.js[:min(len(tc.js), 60)], func(t *testing.T) {
			def, err := DecodeService([]byte(tc.js), false)
			if err == nil {
				_, _, err = def.Build()
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v (%T), want a *FieldError", err, err)
			}
			if fe.Field != tc.field {
				t.Fatalf("FieldError.Field = %q (%v), want %q", fe.Field, fe, tc.field)
			}
			if !strings.HasPrefix(fe.Error(), tc.field+": ") || fe.Msg == "" {
				t.Fatalf("message %q does not start with the field", fe.Error())
			}
		})
	}

	// Malformed bodies are FieldErrors without a field.
	for _, js := range []string{``, `{`, `[]`, `"web"`, `{"Name":"web"} {"Name":"db"}`, `{"Name":}`} {
		_, err := DecodeService([]byte(js), false)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "" {
			t.Errorf("DecodeService(%q): err = %#v, want a FieldError without a field", js, err)
		}
	}

	// Strict decoding names an unknown key; lenient decoding ignores it.
	if _, err := DecodeService([]byte(`{"Name":"web","Bogus":1}`), false); err != nil {
		t.Fatalf("lenient decode: %v", err)
	}
	_, err := DecodeService([]byte(`{"Name":"web","Bogus":1}`), true)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "Bogus" {
		t.Fatalf("strict decode of an unknown key: %v", err)
	}
	if _, err := DecodeService([]byte(`{"name":"web","enable_tag_override":true,"Meta":{"any_key":"v"}}`), true); err != nil {
		t.Fatalf("strict decode of snake_case keys: %v", err)
	}

	good := []struct {
		name  string
		js    string
		check func(t *testing.T, s Service, cs []Check)
	}{
		{"defaults", `{"Name":"web"}`, func(t *testing.T, s Service, cs []Check) {
			want := Service{ID: "web", Name: "web", Weights: Weights{1, 1}}
			rtEqual(t, "service", s, want)
			if cs != nil {
				t.Fatalf("checks = %v", cs)
			}
		}},
		{"snake_case keys", `{"name":"web","id":"web-1","enable_tag_override":true,"tagged_addresses":{"lan_ipv4":{"address":"10.0.0.1","port":80}},
			"meta":{"my_key":"v","Other_Key":"w"},"weights":{"passing":5,"warning":0},"port":8080,"address":"web.local"}`,
			func(t *testing.T, s Service, cs []Check) {
				want := Service{
					ID: "web-1", Name: "web", Port: 8080, Address: "web.local", EnableTagOverride: true,
					TaggedAddresses: map[string]ServiceAddress{"lan_ipv4": {Address: "10.0.0.1", Port: 80}},
					Meta:            map[string]string{"my_key": "v", "Other_Key": "w"},
					Weights:         Weights{5, 0},
				}
				rtEqual(t, "service", s, want)
			}},
		{"snake_case check", `{"Name":"web","check":{"check_id":"c1","http":"https://localhost/h","interval":"500ms","tls_skip_verify":true,
			"header":{"X_Custom_Header":["a"]},"deregister_critical_service_after":"90m","failures_before_critical":3,"success_before_passing":2}}`,
			func(t *testing.T, s Service, cs []Check) {
				if len(cs) != 1 {
					t.Fatalf("checks = %v", cs)
				}
				c := cs[0]
				want := CheckDefinition{
					HTTP: "https://localhost/h", Header: map[string][]string{"X_Custom_Header": {"a"}}, TLSSkipVerify: true,
					Interval: Duration(1e9), DeregisterCriticalServiceAfter: Duration(90 * 60 * 1e9),
					FailuresBeforeCritical: 3, SuccessBeforePassing: 2,
				}
				if c.CheckID != "c1" {
					t.Fatalf("CheckID = %q", c.CheckID)
				}
				rtEqual(t, "definition", c.Definition, want)
				if c.Definition.Type() != "http" {
					t.Fatalf("Type = %q", c.Definition.Type())
				}
			}},
		{"durations as nanoseconds and script args", `{"Name":"web","Checks":[{"ScriptArgs":["/bin/true"],"Interval":10000000000},{"TTL":"1m30s"},{"GRPC":"localhost:9000","Interval":"10s","Timeout":"2s"}]}`,
			func(t *testing.T, s Service, cs []Check) {
				if len(cs) != 3 {
					t.Fatalf("checks = %v", cs)
				}
				if d := cs[0].Definition; d.Interval != Duration(1e10) || !slices.Equal(d.Args, []string{"/bin/true"}) || d.Type() != "script" {
					t.Fatalf("script check = %+v", d)
				}
				if d := cs[1].Definition; d.TTL != Duration(90e9) || d.Type() != "ttl" {
					t.Fatalf("ttl check = %+v", d)
				}
				if d := cs[2].Definition; d.Timeout != Duration(2e9) || d.Type() != "grpc" {
					t.Fatalf("grpc check = %+v", d)
				}
			}},
		{"tagged address without port, IPv6 address", `{"Name":"web","Address":"::1","TaggedAddresses":{"wan":{"Address":"2001:db8::1"}},"Tags":["a","a"]}`,
			func(t *testing.T, s Service, cs []Check) {
				if s.TaggedAddresses["wan"].Address != "2001:db8::1" || s.Address != "::1" || !slices.Equal(s.Tags, []string{"a", "a"}) {
					t.Fatalf("service = %+v", s)
				}
			}},
		{"unknown keys ignored, null check skipped", `{"Name":"web","Bogus":{"x":1},"Checks":[null,{"TTL":"10s"}]}`,
			func(t *testing.T, s Service, cs []Check) {
				if len(cs) != 1 || cs[0].CheckID != "service:web" {
					t.Fatalf("checks = %+v", cs)
				}
			}},
	}
	for _, tc := range good {
		t.Run("good/"+tc.name, func(t *testing.T) {
			def, err := DecodeService([]byte(tc.js), false)
			if err != nil {
				t.Fatalf("DecodeService: %v", err)
			}
			s, cs, err := def.Build()
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			tc.check(t, s, cs)
		})
	}
}

func TestBuildCheck(t *testing.T) {
	for _, tc := range []struct {
		js    string
		id    string
		field string // "" when valid
	}{
		{`{"Name":"mem","TTL":"10s"}`, "mem", ""},
		{`{"Name":"mem","ID":"mem-1","TTL":"10s","ServiceID":"web-1"}`, "mem-1", ""},
		{`{"name":"mem","check_id":"mem-2","ttl":"10s","service_id":"web-1"}`, "mem-2", ""},
		{`{"TTL":"10s"}`, "", "Name"},
		{`{"Name":"mem"}`, "", ""},
		{`{"Name":"mem","HTTP":"localhost","Interval":"10s"}`, "", "HTTP"},
		{`{"Name":"mem","TTL":"10s","Status":"up"}`, "", "Status"},
	} {
		def, err := DecodeCheck([]byte(tc.js), false)
		if err != nil {
			t.Fatalf("DecodeCheck(%s): %v", tc.js, err)
		}
		c, err := def.BuildCheck()
		if tc.id != "" {
			if err != nil || c.CheckID != tc.id || c.Status != StatusCritical {
				t.Errorf("BuildCheck(%s) = %+v, %v", tc.js, c, err)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("BuildCheck(%s): err = %v, want FieldError on %q", tc.js, err, tc.field)
		}
	}
}

// An empty check object is no check, as Consul reads it (some clients send
// "Check":{} when they mean none).
func TestEmptyCheckIsNoCheck(t *testing.T) {
	def, err := DecodeService([]byte(`{"Name":"web","Check":{},"Checks":[{}]}`), false)
	if err != nil {
		t.Fatal(err)
	}
	_, checks, err := def.Build()
	if err != nil || len(checks) != 0 {
		t.Fatalf("Build = %v, %v; want no checks and no error", checks, err)
	}
}

// An identical re-registration (Registrator's resync) changes nothing: the
// index stays, so blocking queries do not wake.
func TestIdenticalRegistrationIsNoChange(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address = "n1", "127.0.0.1"
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	def, _ := DecodeService([]byte(`{"ID":"web1","Name":"web","Port":80,"Tags":["a"],"Check":{"TTL":"30s"}}`), false)
	svc, checks, _ := def.Build()
	if err := r.RegisterService(svc, checks, SourceAPI); err != nil {
		t.Fatal(err)
	}
	snap := r.Snapshot()
	def, _ = DecodeService([]byte(`{"ID":"web1","Name":"web","Port":80,"Tags":["a"],"Check":{"TTL":"30s"}}`), false)
	svc, checks, _ = def.Build()
	if err := r.RegisterService(svc, checks, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if r.Snapshot() != snap {
		t.Fatalf("an identical registration published a new snapshot (index %d -> %d)", snap.Index(), r.Snapshot().Index())
	}
	svc.Port = 81
	r.RegisterService(svc, checks, SourceAPI)
	if r.Snapshot().Index() <= snap.Index() {
		t.Fatal("a changed registration did not move the index")
	}
}

// TestDataDirMadeOnFirstWrite: a fresh data dir holds only the node ID
// after start (each subdirectory is made by its first write), and what is
// written then into a subdirectory made that way is there after a restart.
func TestDataDirMadeOnFirstWrite(t *testing.T) {
	dir := t.TempDir()
	r := rtNew(t, dir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	rtEqual(t, "data dir after start", names, []string{"node-id"})
	rtReg(t, r, SourceAPI, `{"ID":"web-1","Name":"web","Port":80,"Check":{"CheckID":"web-ttl","TTL":"10s"}}`)
	if fs := rtFiles(t, rtServicesDir(dir)); len(fs) != 1 {
		t.Fatalf("services/ holds %v, want one file", fs)
	}
	r2 := rtNew(t, dir)
	rtEqual(t, "services after restart", rtServiceIDs(r2.Snapshot().NodeServices(rtNode)), []string{"consul", "web-1"})
	rtCheck(t, r2.Snapshot(), "web-1", "web-ttl")
}
