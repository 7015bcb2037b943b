package registry

import (
	"cmp"
	"slices"
	"time"

	"github.com/google/btree"
)

// NodeEntry is a node in a snapshot. Entries are immutable once published.
type NodeEntry struct {
	Node
	CreateIndex uint64
	ModifyIndex uint64
}

// ServiceEntry is one service instance in a snapshot, immutable once published.
type ServiceEntry struct {
	Node string
	Service
	CreateIndex uint64
	ModifyIndex uint64
}

// CheckEntry is one check in a snapshot, immutable once published.
type CheckEntry struct {
	Node string
	Check
	CreateIndex uint64
	ModifyIndex uint64
}

// Instance is a service instance with its node and every check that bears
// on its health: the node's checks, then the service's own.
type Instance struct {
	Node    *NodeEntry
	Service *ServiceEntry
	Checks  []*CheckEntry
}

// Status is the worst status among the instance's checks, passing if it has
// none, as Consul aggregates.
func (in Instance) Status() Status { return Aggregate(in.Checks) }

// Aggregate returns the worst status among checks (passing when empty).
func Aggregate(checks []*CheckEntry) Status {
	st := StatusPassing
	for _, c := range checks {
		if worse(c.Status, st) {
			st = c.Status
		}
	}
	if st != StatusPassing && st != StatusWarning {
		return StatusCritical // maintenance, and anything unknown
	}
	return st
}

type nameEntry struct {
	name  string
	index uint64 // the last change to any instance of the name, kept after the last one leaves
}

const degree = 16

func nodeLess(a, b *NodeEntry) bool { return a.Name < b.Name }

func serviceLess(a, b *ServiceEntry) bool {
	if c := cmp.Compare(a.Name, b.Name); c != 0 {
		return c < 0
	}
	if c := cmp.Compare(a.Node, b.Node); c != 0 {
		return c < 0
	}
	return a.ID < b.ID
}

func nodeServiceLess(a, b *ServiceEntry) bool {
	if c := cmp.Compare(a.Node, b.Node); c != 0 {
		return c < 0
	}
	return a.ID < b.ID
}

func checkLess(a, b *CheckEntry) bool {
	if c := cmp.Compare(a.Node, b.Node); c != 0 {
		return c < 0
	}
	if c := cmp.Compare(a.ServiceID, b.ServiceID); c != 0 {
		return c < 0
	}
	return a.CheckID < b.CheckID
}

func nameLess(a, b nameEntry) bool { return a.name < b.name }

// tables are the indexed sets of a catalog. The registry's writer mutates its
// own copy; a snapshot holds a lazy copy-on-write clone, so publishing costs
// O(1) and a change copies only the B-tree nodes on its path.
type tables struct {
	nodes        *btree.BTreeG[*NodeEntry]
	services     *btree.BTreeG[*ServiceEntry] // by name, node, ID
	nodeServices *btree.BTreeG[*ServiceEntry] // by node, ID
	checks       *btree.BTreeG[*CheckEntry]   // by node, service ID, check ID
	names        *btree.BTreeG[nameEntry]
	kv           *btree.BTreeG[*KVEntry]
}

func newTables() tables {
	return tables{
		nodes:        btree.NewG(degree, nodeLess),
		services:     btree.NewG(degree, serviceLess),
		nodeServices: btree.NewG(degree, nodeServiceLess),
		checks:       btree.NewG(degree, checkLess),
		names:        btree.NewG(degree, nameLess),
		kv:           btree.NewG(degree, kvLess),
	}
}

func (t tables) clone() tables {
	return tables{
		nodes:        t.nodes.Clone(),
		services:     t.services.Clone(),
		nodeServices: t.nodeServices.Clone(),
		checks:       t.checks.Clone(),
		names:        t.names.Clone(),
		kv:           t.kv.Clone(),
	}
}

// Snapshot is an immutable view of the catalog. Any number of goroutines may
// read one; nothing in it changes after it is published.
type Snapshot struct {
	index      uint64
	tableIndex [numTables]uint64 // the last change to nodes, services, checks and the KV store
	t          tables
	changed    chan struct{}
	// Closed when a newer snapshot changes the catalog (nodes, services,
	// checks) or the KV store; shared by the snapshots in between.
	catalogChanged chan struct{}
	kvChanged      chan struct{}
	made           time.Time // when it was published (metrics: the lag of its consumers)
	// The agreed KV store (agreed.go), which holds every key but the
	// gossip's reserved ones (gossipKey) once the agent has one; nil: the
	// gossip store holds all.
	agreed AgreedKV
}

// Agreed reports whether the snapshot reads the servers' agreed KV store
// (SetAgreed): the indexes of the keys it shows are then Raft's.
func (s *Snapshot) Agreed() bool { return s.agreed != nil }

// Time is when the snapshot was published.
func (s *Snapshot) Time() time.Time { return s.made }

// Index grows with every change, to the catalog or the KV store, and is
// never 0. The tables' own indexes below never pass it.
func (s *Snapshot) Index() uint64 { return s.index }

// Changed is closed when a newer snapshot replaces this one.
func (s *Snapshot) Changed() <-chan struct{} { return s.changed }

// CatalogChanged is closed when a newer snapshot changes nodes, services or
// checks: a KV write leaves it open.
func (s *Snapshot) CatalogChanged() <-chan struct{} { return s.catalogChanged }

func (s *Snapshot) tableIdx(i int) uint64 { return max(s.tableIndex[i], 1) }

// NodesIndex is the index of the last change to any node (never 0), as
// Consul's nodes table has.
func (s *Snapshot) NodesIndex() uint64 { return s.tableIdx(nodesAt) }

// ServicesIndex is the index of the last change to any service instance
// (never 0).
func (s *Snapshot) ServicesIndex() uint64 { return s.tableIdx(servicesAt) }

// ChecksIndex is the index of the last change to any check (never 0).
func (s *Snapshot) ChecksIndex() uint64 { return s.tableIdx(checksAt) }

// ServiceIndex is the index of the last change to any instance of name
// (including its removal), so that blocking queries on one service wake only
// for that service. A name never seen has index 1: the first registration of
// it moves the index past any answer given before.
func (s *Snapshot) ServiceIndex(name string) uint64 {
	if e, ok := s.t.names.Get(nameEntry{name: name}); ok {
		return e.index
	}
	return 1
}

// Node returns the named node.
func (s *Snapshot) Node(name string) (*NodeEntry, bool) {
	return s.t.nodes.Get(&NodeEntry{Node: Node{Name: name}})
}

// Nodes returns every node, ordered by name.
func (s *Snapshot) Nodes() []*NodeEntry {
	out := make([]*NodeEntry, 0, s.t.nodes.Len())
	s.t.nodes.Ascend(func(n *NodeEntry) bool {
		out = append(out, n)
		return true
	})
	return out
}

// NodeServices returns the services registered on node, ordered by ID.
func (s *Snapshot) NodeServices(node string) []*ServiceEntry {
	var out []*ServiceEntry
	s.t.nodeServices.AscendGreaterOrEqual(&ServiceEntry{Node: node}, func(e *ServiceEntry) bool {
		if e.Node != node {
			return false
		}
		out = append(out, e)
		return true
	})
	return out
}

// NodeService returns one service of a node.
func (s *Snapshot) NodeService(node, id string) (*ServiceEntry, bool) {
	return s.t.nodeServices.Get(&ServiceEntry{Node: node, Service: Service{ID: id}})
}

// ServiceInstances returns the instances of the named service across every
// node, ordered by node and ID, each with its node and checks.
func (s *Snapshot) ServiceInstances(name string) []Instance {
	var out []Instance
	s.t.services.AscendGreaterOrEqual(&ServiceEntry{Service: Service{Name: name}}, func(e *ServiceEntry) bool {
		if e.Name != name {
			return false
		}
		n, ok := s.Node(e.Node)
		if !ok {
			return true // cannot happen: a node's services leave with it
		}
		checks := s.NodeChecks(e.Node, "")
		out = append(out, Instance{Node: n, Service: e, Checks: append(checks, s.NodeChecks(e.Node, e.ID)...)})
		return true
	})
	return out
}

// NodeChecks returns the checks of node that belong to serviceID; an empty
// serviceID gives the node-level checks (such as serfHealth).
func (s *Snapshot) NodeChecks(node, serviceID string) []*CheckEntry {
	var out []*CheckEntry
	s.t.checks.AscendGreaterOrEqual(&CheckEntry{Node: node, Check: Check{ServiceID: serviceID}}, func(c *CheckEntry) bool {
		if c.Node != node || c.ServiceID != serviceID {
			return false
		}
		out = append(out, c)
		return true
	})
	return out
}

// AllNodeChecks returns every check on node, node-level checks first.
func (s *Snapshot) AllNodeChecks(node string) []*CheckEntry {
	var out []*CheckEntry
	s.t.checks.AscendGreaterOrEqual(&CheckEntry{Node: node}, func(c *CheckEntry) bool {
		if c.Node != node {
			return false
		}
		out = append(out, c)
		return true
	})
	return out
}

// Checks calls fn for every check in the catalog until fn returns false.
func (s *Snapshot) Checks(fn func(*CheckEntry) bool) { s.t.checks.Ascend(fn) }

// ServiceNames returns each registered service name with the union of its
// instances' tags (sorted, without duplicates), ordered by name.
func (s *Snapshot) ServiceNames() []NameTags {
	var out []NameTags
	var cur *NameTags
	s.t.services.Ascend(func(e *ServiceEntry) bool {
		if cur == nil || cur.Name != e.Name {
			if cur != nil {
				cur.Tags = sortedUnique(cur.Tags)
			}
			out = append(out, NameTags{Name: e.Name, Tags: []string{}})
			cur = &out[len(out)-1]
		}
		cur.Tags = append(cur.Tags, e.Tags...)
		return true
	})
	if cur != nil {
		cur.Tags = sortedUnique(cur.Tags)
	}
	return out
}

// NameTags is a service name and the tags its instances carry.
type NameTags struct {
	Name string
	Tags []string
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// Counts reports the number of nodes, service instances and checks.
func (s *Snapshot) Counts() (nodes, services, checks int) {
	return s.t.nodes.Len(), s.t.services.Len(), s.t.checks.Len()
}
