package registry

import (
	"errors"
	"testing"
)

// agNode builds an external node as registry/raft hands it over: one
// service "web" (unless svc is empty) with one check on it.
func agNode(name, addr, svc string, status Status) *ExternalNode {
	en := &ExternalNode{Node: NodeEntry{Node: Node{Name: name, Address: addr, Meta: map[string]string{"external-node": "true"}}, CreateIndex: 3, ModifyIndex: 3}}
	if svc != "" {
		en.Services = []*ServiceEntry{{Node: name, Service: Service{ID: svc + "-1", Name: svc, Tags: []string{"ext"}, Address: addr, Port: 80, Weights: Weights{Passing: 1, Warning: 1}}}}
		en.Checks = []*CheckEntry{{Node: name, Check: Check{CheckID: svc + "-up", Name: "up", Status: status, ServiceID: svc + "-1", ServiceName: svc, ServiceTags: []string{"ext"}}}}
	}
	return en
}

func agKV(kvIndex uint64, kv ...string) AgreedKV {
	var es []*KVEntry
	for i := 0; i+1 < len(kv); i += 2 {
		es = append(es, &KVEntry{Key: kv[i], Value: []byte(kv[i+1]), CreateIndex: kvIndex, ModifyIndex: kvIndex})
	}
	return KVTree(es)
}

func agKeys(es []*KVEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Key+"="+string(e.Value))
	}
	return out
}

// An external service shows in every reader of the catalog as an agent's
// does: the node, ServiceInstances with its checks (health), ServiceNames;
// re-registering updates it, deregistering removes it, and each change
// wakes the catalog's watchers and moves the service's index.
func TestAgreedExternalCatalog(t *testing.T) {
	r := rtNew(t, "")
	s0 := r.Snapshot()
	ext := agNode("ext-db", "10.9.0.1", "db", StatusPassing)
	r.SetAgreed(Agreed{Index: 5, CatalogIndex: 3, Nodes: []*ExternalNode{ext}})
	s1 := r.Snapshot()
	if !rtClosed(s0) || !isClosed(s0.CatalogChanged()) {
		t.Error("the external node did not wake the catalog's watchers")
	}
	n, ok := s1.Node("ext-db")
	if !ok || n.Address != "10.9.0.1" || n.Datacenter != "dc1" || n.Meta["external-node"] != "true" {
		t.Fatalf("external node: %+v %v", n, ok)
	}
	ins := s1.ServiceInstances("db")
	if len(ins) != 1 || ins[0].Service.Port != 80 || ins[0].Node.Name != "ext-db" || len(ins[0].Checks) != 1 || ins[0].Status() != StatusPassing {
		t.Fatalf("instances of db: %+v", ins)
	}
	rtEqual(t, "service names", rtNames(s1.ServiceNames()), []string{"consul", "db"})
	if got := rtCheckIDs(s1.AllNodeChecks("ext-db")); len(got) != 1 || got[0] != "db-up" {
		t.Errorf("checks of ext-db: %v", got)
	}
	dbIndex := s1.ServiceIndex("db")

	// The same state again changes nothing.
	r.SetAgreed(Agreed{Index: 6, CatalogIndex: 3, Nodes: []*ExternalNode{ext}})
	if r.Snapshot() != s1 {
		t.Error("an unchanged agreed state published a snapshot")
	}

	// Re-registered with a critical check: an update, not a second instance.
	crit := agNode("ext-db", "10.9.0.1", "db", StatusCritical)
	r.SetAgreed(Agreed{Index: 7, CatalogIndex: 7, Nodes: []*ExternalNode{crit}})
	s2 := r.Snapshot()
	ins = s2.ServiceInstances("db")
	if len(ins) != 1 || ins[0].Status() != StatusCritical {
		t.Fatalf("after the update: %+v", ins)
	}
	if s2.ServiceIndex("db") <= dbIndex {
		t.Error("the check's change did not move db's index")
	}
	if ins[0].Service.CreateIndex != s1.ServiceInstances("db")[0].Service.CreateIndex {
		t.Error("an update changed the service's CreateIndex")
	}

	// The service deregistered (the node stays), then the node.
	r.SetAgreed(Agreed{Index: 8, CatalogIndex: 8, Nodes: []*ExternalNode{agNode("ext-db", "10.9.0.1", "", "")}})
	s3 := r.Snapshot()
	if len(s3.ServiceInstances("db")) != 0 || len(s3.AllNodeChecks("ext-db")) != 0 {
		t.Fatalf("after deregistering the service: %+v", s3.ServiceInstances("db"))
	}
	if _, ok := s3.Node("ext-db"); !ok {
		t.Fatal("the node went with its service")
	}
	r.SetAgreed(Agreed{Index: 9, CatalogIndex: 9})
	s4 := r.Snapshot()
	if _, ok := s4.Node("ext-db"); ok {
		t.Fatal("the deregistered node is still shown")
	}
	if !rtClosed(s3) || !isClosed(s3.CatalogChanged()) {
		t.Error("removing the node woke nobody")
	}
	rtEqual(t, "service names", rtNames(s4.ServiceNames()), []string{"consul"})
}

// The agreed KV store is the snapshot's store but for the reserved prefix
// outside its ACL part, which stays the gossip store's; listings that span
// both merge them in key order; a KV change wakes KV watchers and not the
// catalog's.
func TestAgreedKV(t *testing.T) {
	r := rtNew(t, "")
	for _, k := range []string{"app/gossip", ReservedKVPrefix + "other/x", ReservedKVPrefix + "acl/gossip", "pier/routes/old"} {
		if _, err := r.KVPut(k, []byte("g"), 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	s0 := r.Snapshot()
	r.SetAgreed(Agreed{Index: 10, KVIndex: 10, KV: agKV(10, "app/a", "1", "pier/routes/api", "path: /api/", "zz", "last", ReservedKVPrefix+"acl/token/t", "raft", ReservedKVPrefix+"other/sneaky", "raft")})
	s1 := r.Snapshot()
	if !isClosed(s0.KVChanged()) {
		t.Error("the agreed KV did not wake KV watchers")
	}
	if isClosed(s0.CatalogChanged()) {
		t.Error("the agreed KV woke the catalog's watchers")
	}
	if s1.KVIndex() <= s0.KVIndex() {
		t.Errorf("KVIndex %d did not move past %d", s1.KVIndex(), s0.KVIndex())
	}
	if e, ok := s1.KV("app/a"); !ok || string(e.Value) != "1" || e.ModifyIndex != 10 {
		t.Errorf("agreed key: %+v %v", e, ok)
	}
	if _, ok := s1.KV("app/gossip"); ok {
		t.Error("a gossip key outside the reserved prefix is still shown")
	}
	if e, ok := s1.KV(ReservedKVPrefix + "other/x"); !ok || string(e.Value) != "g" {
		t.Errorf("reserved key from gossip: %+v %v", e, ok)
	}
	if _, ok := s1.KV(ReservedKVPrefix + "other/sneaky"); ok {
		t.Error("a reserved key of the agreed store outside the ACL prefix is shown")
	}
	if e, ok := s1.KV(ReservedKVPrefix + "acl/token/t"); !ok || string(e.Value) != "raft" {
		t.Errorf("ACL key from the agreed store: %+v %v", e, ok)
	}
	if _, ok := s1.KV(ReservedKVPrefix + "acl/gossip"); ok {
		t.Error("a gossip ACL key is still shown")
	}
	rtEqual(t, "routes", agKeys(s1.KVList("pier/routes/")), []string{"pier/routes/api=path: /api/"})
	rtEqual(t, "reserved", agKeys(s1.KVList(ReservedKVPrefix)), []string{ReservedKVPrefix + "acl/token/t=raft", ReservedKVPrefix + "other/x=g"})
	rtEqual(t, "acl", agKeys(s1.KVList(AgreedReservedPrefix)), []string{ReservedKVPrefix + "acl/token/t=raft"})
	rtEqual(t, "other", agKeys(s1.KVList(ReservedKVPrefix+"o")), []string{ReservedKVPrefix + "other/x=g"})
	rtEqual(t, "everything", agKeys(s1.KVList("")), []string{ReservedKVPrefix + "acl/token/t=raft", ReservedKVPrefix + "other/x=g", "app/a=1", "pier/routes/api=path: /api/", "zz=last"})
	rtEqual(t, "keys", s1.KVKeys("", "/"), []string{ReservedKVPrefix, "app/", "pier/", "zz"})

	// A gossip write to the reserved prefix still shows and wakes KV readers
	// (the ACL store compares KVIndex).
	idx := s1.KVIndex()
	if _, err := r.KVPut(ReservedKVPrefix+"other/y", []byte("g2"), 0, nil); err != nil {
		t.Fatal(err)
	}
	s2 := r.Snapshot()
	if !isClosed(s1.KVChanged()) || s2.KVIndex() <= idx {
		t.Error("a reserved write did not move the KV index")
	}
	if _, ok := s2.KV(ReservedKVPrefix + "other/y"); !ok {
		t.Error("the reserved write is not shown")
	}
	if _, err := r.KVPut(AgreedReservedPrefix+"token/z", []byte("g"), 0, nil); !errors.Is(err, ErrKVAgreed) {
		t.Errorf("a gossip write of an agreed ACL key: %v", err)
	}

	// Gossip writes outside the reserved prefix are refused now: they
	// would be answered and never read.
	if _, err := r.KVPut("app/late", []byte("x"), 0, nil); !errors.Is(err, ErrKVAgreed) {
		t.Errorf("a gossip write of an agreed key: %v", err)
	}
	if _, err := r.KVDelete("app/", true, nil); !errors.Is(err, ErrKVAgreed) {
		t.Errorf("a gossip delete of agreed keys: %v", err)
	}

	// A catalog-only agreed change leaves KV watchers asleep; a KV change
	// wakes them.
	kv := agKV(10, "app/a", "1")
	r.SetAgreed(Agreed{Index: 11, KVIndex: 10, KV: kv, CatalogIndex: 11, Nodes: []*ExternalNode{agNode("e", "10.9.0.2", "", "")}})
	s3 := r.Snapshot()
	if isClosed(s2.KVChanged()) {
		t.Error("a catalog change woke KV watchers")
	}
	r.SetAgreed(Agreed{Index: 12, KVIndex: 12, KV: agKV(12, "app/a", "2"), CatalogIndex: 11, Nodes: []*ExternalNode{agNode("e", "10.9.0.2", "", "")}})
	if !isClosed(s3.KVChanged()) {
		t.Error("an agreed KV change woke nobody")
	}
	if e, _ := r.Snapshot().KV("app/a"); string(e.Value) != "2" {
		t.Errorf("app/a = %q", e.Value)
	}
}

// An agent is the authority for its own name: an external node with the
// name of a live member is not shown (nor one with this agent's name), and
// appears when the agent leaves.
func TestAgreedAgentShadows(t *testing.T) {
	r := rtNew(t, "")
	r.SetMemberStatus("node-2", "10.0.0.2", MemberAlive)
	if !r.IsAgentNode("node-2") || !r.IsAgentNode(rtNode) || r.IsAgentNode("ext") {
		t.Fatal("IsAgentNode")
	}
	r.SetAgreed(Agreed{Index: 3, CatalogIndex: 3, Nodes: []*ExternalNode{
		agNode(rtNode, "10.6.6.6", "evil", StatusPassing),
		agNode("node-2", "10.6.6.6", "evil", StatusPassing),
	}})
	s := r.Snapshot()
	if n, _ := s.Node("node-2"); n.Address != "10.0.0.2" {
		t.Errorf("node-2's address: %s", n.Address)
	}
	if n, _ := s.Node(rtNode); n.Address != "10.0.0.1" {
		t.Errorf("this node's address: %s", n.Address)
	}
	if len(s.ServiceInstances("evil")) != 0 {
		t.Error("an external service shows on an agent's node")
	}

	r.SetMemberStatus("node-2", "", MemberLeft)
	s = r.Snapshot()
	if n, ok := s.Node("node-2"); !ok || n.Address != "10.6.6.6" || len(s.ServiceInstances("evil")) != 1 {
		t.Fatalf("after the agent left: %+v %v, %d instances", n, ok, len(s.ServiceInstances("evil")))
	}

	// Forgetting a name that no agent holds (a force-leave of an external
	// node) does not take the servers' records away.
	r.ForgetNode("node-2")
	if len(r.Snapshot().ServiceInstances("evil")) != 1 {
		t.Error("forgetting the name hid the external node")
	}

	// The agent comes back: its name is its own again.
	r.SetMemberStatus("node-2", "10.0.0.2", MemberAlive)
	s = r.Snapshot()
	if n, _ := s.Node("node-2"); n.Address != "10.0.0.2" || len(s.ServiceInstances("evil")) != 0 {
		t.Errorf("after the agent came back: %+v, %d instances", n, len(s.ServiceInstances("evil")))
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// The ACME storage's keys (ACMEKVPrefix) are written through Raft only:
// once the agent has the agreed store, the snapshot shows them from there
// (the DNS server answers DNS-01 records from it), and a gossip write is
// refused.
func TestAgreedACMEKeys(t *testing.T) {
	r := rtNew(t, "")
	r.SetAgreed(Agreed{Index: 2, KVIndex: 2, KV: agKV(2, ACMEChallengeKVPrefix+"_acme-challenge.a.test/1", "digest", ReservedKVPrefix+"other/sneaky", "raft")})
	s := r.Snapshot()
	rtEqual(t, "acme", agKeys(s.KVList(ACMEKVPrefix)), []string{ACMEChallengeKVPrefix + "_acme-challenge.a.test/1=digest"})
	if _, ok := s.KV(ReservedKVPrefix + "other/sneaky"); ok {
		t.Error("an agreed key outside the agreed reserved prefixes is shown")
	}
	if _, err := r.KVPut(ACMEKVPrefix+"certificates/x", []byte("g"), 0, nil); !errors.Is(err, ErrKVAgreed) {
		t.Errorf("a gossip write of an ACME key: %v", err)
	}
}
