package registry

import (
	"reflect"

	"github.com/google/btree"
)

// The snapshot shows two kinds of state (DESIGN.md, "Two kinds of state"):
//
//   - gossip, local-first: every agent's own node record, services and checks,
//     and the KV keys under ReservedKVPrefix but outside AgreedReservedPrefix;
//   - agreed, through the servers' Raft log (registry/raft): the rest of the
//     KV store (the user's keys, and the ACL store under
//     AgreedReservedPrefix), and external nodes with their services and
//     checks (Consul's /v1/catalog/register).
//
// SetAgreed merges the second into the first. The agreed KV is not copied:
// the snapshot reads the agreed store itself (an immutable copy-on-write
// tree), so a Raft apply costs the registry one new snapshot, whatever the
// size of the store. External records are copied into the catalog tables,
// with this registry's own indexes, so that every index a catalog reader
// sees (NodesIndex, ServiceIndex, ...) stays in one space that only grows;
// the agreed KV keys keep their Raft indexes, which a cas against the
// leader needs.
//
// A gossip agent is the authority for its own node: an external node with
// the name of an agent (this one, or a member that is alive, leaving or
// failed) is not shown, and appears only once that agent has left or been
// reaped. The servers refuse such registrations too (IsAgentNode), so this
// covers only a race between a registration and a join.

// AgreedKV is a read-only view of the agreed KV store. The registry keeps
// it in snapshots and reads it from any goroutine: it must never change.
type AgreedKV interface {
	// KV returns one key.
	KV(key string) (*KVEntry, bool)
	// AscendKV calls fn for each key from from on, in order, until fn
	// returns false.
	AscendKV(from string, fn func(*KVEntry) bool)
}

// ExternalNode is a node registered through the catalog API rather than by
// an agent, with its services (by ID) and checks (by check ID). Immutable
// once given to SetAgreed. Its indexes are those of the Raft log; the
// snapshot shows the records with the registry's own.
type ExternalNode struct {
	Node     NodeEntry
	Services []*ServiceEntry
	Checks   []*CheckEntry
}

// Agreed is the servers' agreed state as the registry merges it.
type Agreed struct {
	Index        uint64          // the last Raft index that changed KV or Nodes (how mirrors order states)
	KVIndex      uint64          // the Raft index of the last change to KV
	KV           AgreedKV        // nil: an empty store
	CatalogIndex uint64          // the Raft index of the last change to Nodes
	Nodes        []*ExternalNode // by node name
}

// agreedState is the registry's part of the agreed state; under r.mu.
type agreedState struct {
	agreed   *Agreed
	agreedKV AgreedKV                 // what snapshots read; nil until SetAgreed
	extNodes map[string]*ExternalNode // the agreed external nodes, by name
	extShown map[string]*ExternalNode // those in the tables (not shadowed by an agent)
}

// SetAgreed merges the agreed state into the next snapshot: its KV store
// replaces the gossip store but for the keys under ReservedKVPrefix outside
// AgreedReservedPrefix, and its external nodes
// join the catalog. It takes what it is given: ordering states (a server
// lagging behind must not take the registry back in time) is the caller's
// business, as registry/raft's mirror does it.
func (r *Registry) SetAgreed(a Agreed) {
	if a.KV == nil {
		a.KV = emptyAgreedKV
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.agreed
	tx := r.begin()
	if prev == nil || a.CatalogIndex != prev.CatalogIndex {
		nodes := make(map[string]*ExternalNode, len(a.Nodes))
		for _, en := range a.Nodes {
			nodes[en.Node.Name] = en
		}
		for name := range r.extShown {
			if nodes[name] == nil {
				tx.removeNode(name)
				delete(r.extShown, name)
			}
		}
		r.extNodes = nodes
		if r.extShown == nil {
			r.extShown = map[string]*ExternalNode{}
		}
		for _, en := range a.Nodes {
			if !r.gossipOwns(en.Node.Name) {
				tx.showExternal(en)
			}
		}
	}
	if prev == nil || a.KVIndex != prev.KVIndex {
		tx.changed = true
		tx.tables |= tableKV
	}
	r.agreed, r.agreedKV = &a, a.KV
	if prev == nil {
		tx.changed = true // the first: snapshots must start reading the agreed store
	}
	tx.commit()
}

// Agreed returns the agreed state last merged (false: none yet).
func (r *Registry) Agreed() (Agreed, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.agreed == nil {
		return Agreed{}, false
	}
	return *r.agreed, true
}

// IsAgentNode reports whether node is a gossip agent of this cluster (this
// one, or a member alive, leaving or failed): the owner of its records,
// which an external registration must not overwrite.
func (r *Registry) IsAgentNode(node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gossipOwns(node)
}

// gossipOwns: see IsAgentNode; r.mu held.
func (r *Registry) gossipOwns(node string) bool {
	if node == r.cfg.NodeName {
		return true
	}
	nr := r.repl[node]
	return nr != nil && (nr.member == MemberAlive || nr.member == MemberLeaving || nr.member == MemberFailed)
}

// showExternal brings the tables from what they show of en's node (an
// earlier version, or nothing) to en; a record that did not change is not
// written, so its index stays and its watchers sleep.
func (tx *txn) showExternal(en *ExternalNode) {
	r := tx.r
	name := en.Node.Name
	old := r.extShown[name]
	if old == en {
		return
	}
	r.extShown[name] = en
	n := en.Node.Node
	if n.Datacenter == "" {
		n.Datacenter = r.cfg.Datacenter
	}
	if old == nil || !reflect.DeepEqual(old.Node.Node, en.Node.Node) {
		tx.upsertNode(n)
	}
	var oldSvcs map[string]*ServiceEntry
	var oldChecks map[string]*CheckEntry
	if old != nil {
		oldSvcs = make(map[string]*ServiceEntry, len(old.Services))
		for _, s := range old.Services {
			oldSvcs[s.ID] = s
		}
		oldChecks = make(map[string]*CheckEntry, len(old.Checks))
		for _, c := range old.Checks {
			oldChecks[c.CheckID] = c
		}
	}
	// Checks go first: a service's removal must find its checks gone.
	keepCheck := make(map[string]bool, len(en.Checks))
	for _, c := range en.Checks {
		keepCheck[c.CheckID] = true
	}
	for id, c := range oldChecks {
		if !keepCheck[id] {
			tx.deleteCheck(name, c.ServiceID, id)
		}
	}
	keepSvc := make(map[string]bool, len(en.Services))
	for _, s := range en.Services {
		keepSvc[s.ID] = true
	}
	for id, s := range oldSvcs {
		if !keepSvc[id] {
			tx.deleteService(name, s.Service)
		}
	}
	for _, s := range en.Services {
		if o, ok := oldSvcs[s.ID]; ok && (o == s || reflect.DeepEqual(o.Service, s.Service)) {
			continue
		}
		tx.upsertService(name, s.Service)
	}
	for _, c := range en.Checks {
		o, ok := oldChecks[c.CheckID]
		if ok && (o == c || reflect.DeepEqual(o.Check, c.Check)) {
			continue
		}
		if ok && o.ServiceID != c.ServiceID {
			tx.deleteCheck(name, o.ServiceID, o.CheckID)
		}
		tx.upsertCheck(name, c.Check)
	}
}

// shadowExternal takes an external node out of the tables because an agent
// of that name joined; r.mu held.
func (tx *txn) shadowExternal(name string) {
	if tx.r.extShown[name] != nil {
		tx.removeNode(name)
		delete(tx.r.extShown, name)
	}
}

// unshadowExternal shows the external node of that name, if the servers
// hold one, once the agent that shadowed it is gone (the node's records
// were just removed from the tables: whatever showed is gone); r.mu held.
func (tx *txn) unshadowExternal(name string) {
	delete(tx.r.extShown, name)
	if en := tx.r.extNodes[name]; en != nil && !tx.r.gossipOwns(name) {
		tx.showExternal(en)
	}
}

// KVTree makes an AgreedKV of entries (any order; a later duplicate key
// wins), as a client's mirror does with the state a server sent.
func KVTree(entries []*KVEntry) AgreedKV {
	t := btree.NewG(degree, kvLess)
	for _, e := range entries {
		t.ReplaceOrInsert(e)
	}
	return kvTree{t}
}

var emptyAgreedKV AgreedKV = kvTree{btree.NewG(degree, kvLess)}

type kvTree struct{ t *btree.BTreeG[*KVEntry] }

func (k kvTree) KV(key string) (*KVEntry, bool) { return k.t.Get(&KVEntry{Key: key}) }

func (k kvTree) AscendKV(from string, fn func(*KVEntry) bool) {
	k.t.AscendGreaterOrEqual(&KVEntry{Key: from}, fn)
}
