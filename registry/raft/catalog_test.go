package raft

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry"
)

func (a *applier) register(js string) Result {
	a.t.Helper()
	var req RegisterRequest
	if err := json.Unmarshal([]byte(js), &req); err != nil {
		a.t.Fatal(err)
	}
	return a.apply(command{Type: cmdCatalogRegister, Register: &req})
}

func (a *applier) deregister(req DeregisterRequest) Result {
	return a.apply(command{Type: cmdCatalogDeregister, Deregister: &req})
}

const esmBody = `{"Datacenter":"dc1","Node":"ext-db","Address":"10.9.0.1",
 "NodeMeta":{"external-node":"true","external-probe":"true"},
 "Service":{"Service":"db","Tags":["primary"],"Port":5432,"TaggedAddresses":{"lan":{"address":"10.9.0.1","port":5432}}},
 "Check":{"Node":"ext-db","CheckID":"db-tcp","Name":"db tcp","Status":"passing","ServiceID":"db","Definition":{"TCP":"10.9.0.1:5432","Interval":"10s"}}}`

// Consul's semantics for external nodes: a registration creates the node,
// its service (ID defaulting to the name) and checks with the log's index;
// registering again updates and keeps CreateIndex; an unchanged one moves
// nothing; deregistering a service takes its checks; deregistering the
// node takes everything.
func TestCatalogRegisterDeregister(t *testing.T) {
	a := newApplier(t, nil)
	if r := a.register(esmBody); !r.OK || r.Err != nil {
		t.Fatalf("register: %+v", r)
	}
	st := a.f.State()
	en, ok := st.ExternalNode("ext-db")
	if !ok || en.Node.Address != "10.9.0.1" || en.Node.Meta["external-probe"] != "true" || en.Node.CreateIndex != 1 {
		t.Fatalf("node: %+v", en)
	}
	if len(en.Services) != 1 || en.Services[0].ID != "db" || en.Services[0].Port != 5432 || en.Services[0].Weights != (registry.Weights{Passing: 1, Warning: 1}) ||
		en.Services[0].TaggedAddresses["lan"] != (registry.ServiceAddress{Address: "10.9.0.1", Port: 5432}) {
		t.Fatalf("service: %+v", en.Services)
	}
	if len(en.Checks) != 1 || en.Checks[0].Status != registry.StatusPassing || en.Checks[0].ServiceName != "db" || !reflect.DeepEqual(en.Checks[0].ServiceTags, []string{"primary"}) {
		t.Fatalf("check: %+v", en.Checks)
	}
	if st.CatalogIndex() != 1 {
		t.Errorf("catalog index %d", st.CatalogIndex())
	}

	// Unchanged: the record keeps its pointer and the index stays.
	a.register(esmBody)
	if en2, _ := a.f.State().ExternalNode("ext-db"); en2 != en || a.f.State().CatalogIndex() != 1 {
		t.Error("an unchanged registration changed the state")
	}

	// The check goes critical, a node-level check and a second service
	// arrive (a check with no status is critical, its ID its name).
	a.register(`{"Datacenter":"dc1","Node":"ext-db","Address":"10.9.0.1","NodeMeta":{"external-node":"true","external-probe":"true"},
		"Checks":[{"CheckID":"db-tcp","Name":"db tcp","Status":"critical","ServiceID":"db"},{"Name":"ping"}]}`)
	a.register(`{"Node":"ext-db","SkipNodeUpdate":true,"Service":{"ID":"cache1","Service":"cache","Port":6379}}`)
	en, _ = a.f.State().ExternalNode("ext-db")
	if en.Node.CreateIndex != 1 || en.Node.ModifyIndex != 1 || en.Node.Address != "10.9.0.1" {
		t.Errorf("the node changed: %+v", en.Node)
	}
	ids := func(en *registry.ExternalNode) (svcs, checks []string) {
		for _, s := range en.Services {
			svcs = append(svcs, s.ID)
		}
		for _, c := range en.Checks {
			checks = append(checks, c.CheckID+"="+string(c.Status))
		}
		return
	}
	svcs, checks := ids(en)
	if !reflect.DeepEqual(svcs, []string{"cache1", "db"}) || !reflect.DeepEqual(checks, []string{"db-tcp=critical", "ping=critical"}) {
		t.Fatalf("services %v, checks %v", svcs, checks)
	}
	if c := en.Checks[0]; c.CreateIndex != 1 || c.ModifyIndex != 3 {
		t.Errorf("updated check's indexes: %d/%d", c.CreateIndex, c.ModifyIndex)
	}

	// New tags on the service reach its checks.
	a.register(`{"Node":"ext-db","SkipNodeUpdate":true,"Service":{"ID":"db","Service":"db","Tags":["replica"],"Port":5432}}`)
	en, _ = a.f.State().ExternalNode("ext-db")
	if !reflect.DeepEqual(en.Checks[0].ServiceTags, []string{"replica"}) {
		t.Errorf("check tags after the service's change: %v", en.Checks[0].ServiceTags)
	}

	// A check on a service the node lacks fails the whole registration.
	before := a.f.State().CatalogIndex()
	r := a.register(`{"Node":"ext-db","Address":"10.9.9.9","Checks":[{"CheckID":"x","ServiceID":"nope"}]}`)
	if r.OK || !errors.Is(r.Err, ErrMissingService) {
		t.Errorf("check on a missing service: %+v", r)
	}
	if en, _ := a.f.State().ExternalNode("ext-db"); en.Node.Address != "10.9.0.1" || a.f.State().CatalogIndex() != before {
		t.Error("a failed registration changed the node")
	}

	// Deregister a service: its checks go, the rest stays.
	a.deregister(DeregisterRequest{Node: "ext-db", ServiceID: "db"})
	en, _ = a.f.State().ExternalNode("ext-db")
	svcs, checks = ids(en)
	if !reflect.DeepEqual(svcs, []string{"cache1"}) || !reflect.DeepEqual(checks, []string{"ping=critical"}) {
		t.Fatalf("after deregistering db: services %v, checks %v", svcs, checks)
	}
	a.deregister(DeregisterRequest{Node: "ext-db", CheckID: "ping"})
	if en, _ := a.f.State().ExternalNode("ext-db"); len(en.Checks) != 0 {
		t.Error("deregistering a check left it")
	}
	// Unknown things are no error.
	if r := a.deregister(DeregisterRequest{Node: "nobody"}); !r.OK {
		t.Errorf("deregistering an unknown node: %+v", r)
	}
	a.deregister(DeregisterRequest{Node: "ext-db"})
	if _, ok := a.f.State().ExternalNode("ext-db"); ok || len(a.f.State().ExternalNodes()) != 0 {
		t.Error("deregistering the node left it")
	}
	if r := a.deregister(DeregisterRequest{}); r.OK || r.Err == nil {
		t.Error("a deregistration without a node was applied")
	}
}

// External nodes survive a snapshot and restore, and a snapshot written
// before they existed still restores.
func TestCatalogSnapshotRestore(t *testing.T) {
	a := newApplier(t, nil)
	a.kv(KVOp{Verb: KVSet, Key: "k", Value: []byte("v")})
	a.register(esmBody)
	a.register(`{"Node":"ext-2","Address":"10.9.0.2"}`)
	snap, _ := a.f.Snapshot()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	f2 := NewFSM(nil)
	if err := f2.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	s1, s2 := a.f.State(), f2.State()
	if s1.CatalogIndex() != s2.CatalogIndex() || !reflect.DeepEqual(s1.ExternalNodes(), s2.ExternalNodes()) {
		t.Errorf("restored external nodes differ:\n%+v\n%+v", s1.ExternalNodes(), s2.ExternalNodes())
	}

	old := `{"Index":2,"KVIndex":2,"SessionIndex":0,"KVs":1,"Sessions":0}` + "\n" + `{"Key":"k","Value":"dg==","CreateIndex":2,"ModifyIndex":2}` + "\n"
	f3 := NewFSM(nil)
	if err := f3.Restore(io.NopCloser(strings.NewReader(old))); err != nil {
		t.Fatalf("an old snapshot: %v", err)
	}
	if e, ok := f3.State().KV("k"); !ok || string(e.Value) != "v" || len(f3.State().ExternalNodes()) != 0 {
		t.Errorf("old snapshot restored as %+v %v", e, ok)
	}
}

// Validate names the bad field with Consul's words.
func TestRegisterValidate(t *testing.T) {
	for _, tc := range []struct{ body, field, msg string }{
		{`{"Address":"1.2.3.4"}`, "Node", "Must provide node"},
		{`{"Node":"n"}`, "Address", "Must provide address"},
		{`{"Node":"n","ID":"nope","Address":"a"}`, "ID", "Bad node ID"},
		{`{"Node":"n","Address":"a","Service":{"Port":1}}`, "Service.Service", "cannot be empty"},
		{`{"Node":"n","Address":"a","Service":{"ID":"x"}}`, "Service.Service", "Must provide service name"},
		{`{"Node":"n","Address":"a","Service":{"Service":"s","Address":"0.0.0.0"}}`, "Service.Address", "Invalid service address"},
		{`{"Node":"n","Address":"a","Service":{"Service":"s","Port":70000}}`, "Service.Port", "not a port"},
		{`{"Node":"n","Address":"a","Service":{"Service":"s","Meta":{"bad key":"v"}}}`, "Service.Meta", "invalid characters"},
		{`{"Node":"n","Address":"a","Checks":[{"Name":"c"},{"Node":"m","CheckID":"c2"}]}`, "Checks[1].Node", "doesn't match register request node"},
		{`{"Node":"n","Address":"a","Check":{"Status":"passing"}}`, "Check.CheckID", "check ID or name"},
		{`{"Node":"n","Address":"a","Check":{"Name":"c","Status":"fine"}}`, "Check.Status", "not one of"},
	} {
		var req RegisterRequest
		if err := json.Unmarshal([]byte(tc.body), &req); err != nil {
			t.Fatal(err)
		}
		err := req.Validate()
		var fe *registry.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(fe.Msg, tc.msg) {
			t.Errorf("%s: %v, want %s: ...%s...", tc.body, err, tc.field, tc.msg)
		}
	}
	var ok RegisterRequest
	if err := json.Unmarshal([]byte(esmBody), &ok); err != nil || ok.Validate() != nil {
		t.Errorf("ESM's body: %v %v", err, ok.Validate())
	}
}
