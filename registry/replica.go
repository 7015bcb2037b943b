package registry

import (
	"maps"
	"slices"
	"sync"
	"time"
)

// EntryKind says what an Entry carries.
type EntryKind uint8

// The kinds of replicated entries. A node's record, each of its services and
// each of its checks is one entry with its own version, so a change is
// gossiped as one small message and merged without regard to order.
const (
	KindNode    EntryKind = 1
	KindService EntryKind = 2
	KindCheck   EntryKind = 3
	KindKV      EntryKind = 4 // a key of the replicated KV store; Node is its last writer
)

// Entry is one versioned record of one node, the unit of replication. Only
// the owning node writes its entries; everyone merges "higher version wins".
// A deletion is a tombstone (Deleted) with a version of its own.
type Entry struct {
	Node     string    `json:"n"`
	Kind     EntryKind `json:"k"`
	Key      string    `json:"id,omitempty"` // service or check ID; empty for the node record
	Version  uint64    `json:"v"`
	Deleted  bool      `json:"d,omitempty"`
	NodeInfo *Node     `json:"node,omitempty"`
	Service  *Service  `json:"svc,omitempty"`
	Check    *Check    `json:"chk,omitempty"`
	KV       *KVValue  `json:"kv,omitempty"`

	at         time.Time // when a tombstone was made or learnt, for its collection
	keyChanged bool      // the key was not valid UTF-8 where it was encoded (UnmarshalJSON)
}

type entryKey struct {
	kind EntryKind
	key  string
}

func (e *Entry) key() entryKey { return entryKey{e.Kind, e.Key} }

// NodeState is the whole known state of one node, for anti-entropy. The
// sender's view holds every change of the node up to Complete: an entry with
// a version at or below it that the state lacks has been deleted.
type NodeState struct {
	Node     string  `json:"n"`
	Complete uint64  `json:"c"`
	Entries  []Entry `json:"e"`
}

// MemberStatus is a node's membership as the gossip layer sees it, with
// Serf's numbering, which Consul's API exposes.
type MemberStatus int

const (
	MemberNone MemberStatus = iota
	MemberAlive
	MemberLeaving
	MemberLeft
	MemberFailed
)

func (s MemberStatus) String() string {
	switch s {
	case MemberAlive:
		return "alive"
	case MemberLeaving:
		return "leaving"
	case MemberLeft:
		return "left"
	case MemberFailed:
		return "failed"
	}
	return "none"
}

// Member is one node of the cluster as /v1/agent/members shows it.
type Member struct {
	Name   string
	Addr   string
	Port   int
	Tags   map[string]string
	Status MemberStatus
}

// nodeRepl is what the registry knows of one node's replicated state.
type nodeRepl struct {
	entries  map[entryKey]Entry // live entries and tombstones
	complete uint64             // our view holds every change up to this version
	member   MemberStatus
	addr     string
	pending  map[entryKey]Entry // entries that arrived before the node was a member
	pendComp uint64
}

func newNodeRepl() *nodeRepl {
	return &nodeRepl{entries: map[entryKey]Entry{}}
}

// clock is a hybrid logical clock: wall milliseconds in the high bits and a
// counter in the low 16, so versions grow across restarts without being
// persisted, and past any version seen from others.
type clock struct {
	mu   sync.Mutex
	last uint64
	now  func() time.Time
}

func (c *clock) next() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := uint64(c.now().UnixMilli()) << 16
	if v <= c.last {
		v = c.last + 1
	}
	c.last = v
	return v
}

func (c *clock) observe(v uint64) {
	c.mu.Lock()
	if v > c.last {
		c.last = v
	}
	c.mu.Unlock()
}

func (c *clock) current() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// SetBroadcaster sets the function that receives this node's changed entries
// after each change, to send them to the cluster. It is called with the
// registry's lock held and must not block. Set it before the agent serves.
func (r *Registry) SetBroadcaster(fn func([]Entry)) {
	r.mu.Lock()
	r.bcast = fn
	r.mu.Unlock()
}

// NodeName is this node's name.
func (r *Registry) NodeName() string { return r.cfg.NodeName }

// FullState returns the state of every node that is a member (this node
// first), tombstones included, for a push/pull.
func (r *Registry) FullState() []NodeState { return r.StatesOf(nil) }

// StatesOf returns FullState's states of the nodes in names only (all of
// them when names is nil), without copying the others: the gossip layer's
// repair sends a few owners' states, not the whole catalog.
func (r *Registry) StatesOf(names map[string]bool) []NodeState {
	r.mu.Lock()
	defer r.mu.Unlock()
	self := r.cfg.NodeName
	var out []NodeState
	if names == nil || names[self] {
		out = append(out, r.stateOf(self, r.repl[self], r.clock.current()))
	}
	for _, n := range slices.Sorted(maps.Keys(r.repl)) {
		nr := r.repl[n]
		if n == self || (nr.member != MemberAlive && nr.member != MemberFailed) || (names != nil && !names[n]) {
			continue
		}
		out = append(out, r.stateOf(n, nr, nr.complete))
	}
	return out
}

// EachVersion walks what FullState and KVState would return without copying
// it: owner once for each node state, then entry for each of its entries,
// and entry for each key and tombstone of the KV store with owner "". The
// entries' contents are left out where copying them would allocate (KV
// values). The gossip layer digests the replica every second with it, which
// copying the whole state made the largest cost of an idle agent. Both run
// with the registry's lock held: they must be quick and must not call r.
func (r *Registry) EachVersion(owner func(node string), entry func(owner string, e Entry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n, nr := range r.repl {
		if n != r.cfg.NodeName && nr.member != MemberAlive && nr.member != MemberFailed {
			continue
		}
		owner(n)
		for _, e := range nr.entries {
			entry(n, e)
		}
	}
	r.t.kv.Ascend(func(e *KVEntry) bool {
		entry("", Entry{Node: e.writer, Kind: KindKV, Key: e.Key, Version: e.version})
		return true
	})
	for _, t := range r.kvTombs {
		entry("", t)
	}
}

func (r *Registry) stateOf(name string, nr *nodeRepl, complete uint64) NodeState {
	st := NodeState{Node: name, Complete: complete, Entries: make([]Entry, 0, len(nr.entries))}
	for _, e := range nr.entries {
		st.Entries = append(st.Entries, e)
	}
	return st
}

// Merge applies entries received from the cluster and returns those that
// were news here, which the gossip layer passes on.
func (r *Registry) Merge(entries []Entry) []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	tx := r.begin()
	var fresh []Entry
	for _, e := range entries {
		if tx.mergeEntry(e) {
			fresh = append(fresh, e)
		}
	}
	tx.commit()
	return fresh
}

// MergeStates applies whole node states from a push/pull and returns the
// entries that were news here.
func (r *Registry) MergeStates(states []NodeState) []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	tx := r.begin()
	var fresh []Entry
	for _, st := range states {
		fresh = tx.mergeState(st, fresh)
	}
	tx.commit()
	return fresh
}

// SetMemberStatus records what the gossip layer saw of a node: an alive
// node's serfHealth passes, a failed node's is critical (its services leave
// ?passing answers but stay listed until reaped), and a node that left is
// removed with everything it registered.
func (r *Registry) SetMemberStatus(name, addr string, st MemberStatus) {
	if name == r.cfg.NodeName {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	tx := r.begin()
	nr := r.repl[name]
	if nr == nil {
		nr = newNodeRepl()
		r.repl[name] = nr
	}
	prev := nr.member
	nr.member, nr.addr = st, addr
	if st == MemberAlive || st == MemberLeaving || st == MemberFailed {
		tx.shadowExternal(name) // the agent owns its name (agreed.go)
	}
	switch st {
	case MemberAlive, MemberLeaving:
		if _, ok := nr.entries[entryKey{KindNode, ""}]; !ok {
			// Until the node's own record arrives, show what membership
			// knows, so the node is never missing from the catalog.
			tx.upsertNode(Node{Name: name, Address: addr, Datacenter: r.cfg.Datacenter})
		}
		tx.upsertCheck(name, serfCheck(true))
		if prev != MemberAlive && prev != MemberLeaving && prev != MemberFailed {
			pend, comp := nr.pending, nr.pendComp
			nr.pending, nr.pendComp = nil, 0
			for _, e := range pend {
				tx.mergeEntry(e)
			}
			nr.complete = max(nr.complete, comp)
		}
	case MemberFailed:
		if _, ok := r.t.nodes.Get(&NodeEntry{Node: Node{Name: name}}); !ok {
			tx.upsertNode(Node{Name: name, Address: addr, Datacenter: r.cfg.Datacenter})
		}
		tx.upsertCheck(name, serfCheck(false))
	case MemberLeft, MemberNone:
		tx.removeNode(name)
		clear(nr.entries)
		nr.pending = nil
		tx.unshadowExternal(name)
	}
	tx.commit()
}

// ForgetNode removes a node and its records, as when a failed node is
// reaped. Its completeness is kept so that stale copies of its entries
// relayed later are not taken for new ones.
func (r *Registry) ForgetNode(name string) {
	r.SetMemberStatus(name, "", MemberLeft)
}

// CollectTombstones drops tombstones older than ttl: by then every node has
// merged them, and anti-entropy's completeness rule covers the rest.
func (r *Registry) CollectTombstones(ttl time.Duration) {
	cut := r.clock.now().Add(-ttl)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, nr := range r.repl {
		for k, e := range nr.entries {
			if e.Deleted && e.at.Before(cut) {
				delete(nr.entries, k)
			}
		}
	}
	r.collectKVTombstones()
}

func serfCheck(alive bool) Check {
	c := Check{CheckID: SerfCheckID, Name: "Serf Health Status", Status: StatusPassing, Output: "Agent alive and reachable"}
	if !alive {
		c.Status, c.Output = StatusCritical, "Agent not live or unreachable"
	}
	return c
}

// mergeEntry applies one remote entry if it is newer than what is known, and
// reports whether it was.
func (tx *txn) mergeEntry(e Entry) bool {
	r := tx.r
	if e.Kind == KindKV {
		return tx.mergeKV(e)
	}
	if e.Node == r.cfg.NodeName {
		// Our own entries coming back: only make sure we never issue a
		// version at or below one the cluster has seen from us.
		r.clock.observe(e.Version)
		return false
	}
	if !e.valid() {
		return false
	}
	nr := r.repl[e.Node]
	if nr == nil {
		nr = newNodeRepl()
		r.repl[e.Node] = nr
	}
	k := e.key()
	switch nr.member {
	case MemberLeft:
		return false
	case MemberNone:
		// Not a member yet: keep it until membership says so.
		if cur, ok := nr.pending[k]; ok && cur.Version >= e.Version {
			return false
		}
		if nr.pending == nil {
			nr.pending = map[entryKey]Entry{}
		}
		nr.pending[k] = e
		return true
	}
	cur, ok := nr.entries[k]
	if ok && cur.Version >= e.Version {
		return false
	}
	if !ok && e.Version <= nr.complete {
		return false // deleted and collected since: not to be resurrected
	}
	tx.apply(e.Node, nr, e)
	return true
}

// mergeState applies a node's whole state and removes what it no longer has;
// it appends the entries that were news to fresh.
func (tx *txn) mergeState(st NodeState, fresh []Entry) []Entry {
	r := tx.r
	if st.Node == r.cfg.NodeName {
		r.clock.observe(st.Complete)
		return fresh
	}
	nr := r.repl[st.Node]
	if nr == nil {
		nr = newNodeRepl()
		r.repl[st.Node] = nr
	}
	if nr.member == MemberLeft {
		return fresh
	}
	seen := make(map[entryKey]bool, len(st.Entries))
	for _, e := range st.Entries {
		if e.Node != st.Node {
			continue
		}
		seen[e.key()] = true
		if tx.mergeEntry(e) {
			fresh = append(fresh, e)
		}
	}
	if nr.member == MemberNone {
		nr.pendComp = max(nr.pendComp, st.Complete)
		return fresh
	}
	for k, cur := range nr.entries {
		if !seen[k] && cur.Version <= st.Complete {
			tx.drop(st.Node, nr, cur)
		}
	}
	nr.complete = max(nr.complete, st.Complete)
	return fresh
}

func (e *Entry) valid() bool {
	if e.Node == "" || e.Version == 0 {
		return false
	}
	switch e.Kind {
	case KindNode:
		return e.Deleted || e.NodeInfo != nil && e.NodeInfo.Name == e.Node
	case KindService:
		return e.Key != "" && (e.Deleted || e.Service != nil && e.Service.ID == e.Key && e.Service.Name != "")
	case KindCheck:
		return e.Key != "" && e.Key != SerfCheckID && (e.Deleted || e.Check != nil && e.Check.CheckID == e.Key)
	}
	return false
}

// apply records e as the node's current entry and updates the tables.
func (tx *txn) apply(node string, nr *nodeRepl, e Entry) {
	prev, had := nr.entries[e.key()]
	if e.Deleted {
		e.at = tx.r.clock.now()
	}
	nr.entries[e.key()] = e
	switch e.Kind {
	case KindNode:
		if !e.Deleted {
			tx.upsertNode(*e.NodeInfo)
		}
	case KindService:
		if e.Deleted {
			if had && !prev.Deleted {
				tx.deleteService(node, *prev.Service)
			}
		} else {
			tx.upsertService(node, *e.Service)
		}
	case KindCheck:
		if had && !prev.Deleted && (e.Deleted || prev.Check.ServiceID != e.Check.ServiceID) {
			tx.deleteCheck(node, prev.Check.ServiceID, prev.Check.CheckID)
		}
		if !e.Deleted {
			tx.upsertCheck(node, *e.Check)
		}
	}
}

// drop forgets an entry that a complete state no longer holds.
func (tx *txn) drop(node string, nr *nodeRepl, e Entry) {
	delete(nr.entries, e.key())
	if e.Deleted {
		return
	}
	switch e.Kind {
	case KindService:
		tx.deleteService(node, *e.Service)
	case KindCheck:
		tx.deleteCheck(node, e.Check.ServiceID, e.Check.CheckID)
	}
}

// local stamps a change of this node with a new version, applies it and
// queues it for the broadcaster.
func (tx *txn) local(e Entry) {
	r := tx.r
	e.Node = r.cfg.NodeName
	e.Version = r.clock.next()
	tx.apply(e.Node, r.repl[e.Node], e)
	tx.out = append(tx.out, e)
}

func (tx *txn) localService(s Service) {
	tx.local(Entry{Kind: KindService, Key: s.ID, Service: &s})
}

func (tx *txn) localServiceDelete(id string) {
	tx.local(Entry{Kind: KindService, Key: id, Deleted: true})
}

func (tx *txn) localCheck(c Check) {
	tx.local(Entry{Kind: KindCheck, Key: c.CheckID, Check: &c})
}

func (tx *txn) localCheckDelete(id string) {
	tx.local(Entry{Kind: KindCheck, Key: id, Deleted: true})
}

// removeNode deletes a node and everything on it from the tables.
func (tx *txn) removeNode(node string) {
	t := &tx.r.t
	tx.touchNode(node)
	var svcs []*ServiceEntry
	t.nodeServices.AscendGreaterOrEqual(&ServiceEntry{Node: node}, func(e *ServiceEntry) bool {
		if e.Node != node {
			return false
		}
		svcs = append(svcs, e)
		return true
	})
	for _, e := range svcs {
		tx.deleteService(node, e.Service)
	}
	var checks []*CheckEntry
	t.checks.AscendGreaterOrEqual(&CheckEntry{Node: node}, func(c *CheckEntry) bool {
		if c.Node != node {
			return false
		}
		checks = append(checks, c)
		return true
	})
	for _, c := range checks {
		t.checks.Delete(c)
		tx.changed = true
		tx.tables |= tableChecks
	}
	if _, ok := t.nodes.Delete(&NodeEntry{Node: Node{Name: node}}); ok {
		tx.changed = true
		tx.tables |= tableNodes
	}
}

// Holds reports whether merging node's entry (kind, key) at version v would
// be refused here as not newer than the one held, so that the gossip layer
// need not decode its contents: each broadcast reaches a node about a dozen
// times (every node passes on what was news to it), and decoding the
// copies it already held was most of what receiving them cost. It answers
// false wherever Merge does more than compare versions: for KV entries and
// this node's own.
func (r *Registry) Holds(node string, kind EntryKind, key string, v uint64) bool {
	if kind == KindKV || node == r.cfg.NodeName {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	nr := r.repl[node]
	if nr == nil {
		return false
	}
	k := entryKey{kind, key}
	var cur Entry
	var ok bool
	switch nr.member {
	case MemberNone:
		cur, ok = nr.pending[k]
	case MemberLeft:
		return false
	default:
		cur, ok = nr.entries[k]
	}
	return ok && cur.Version >= v
}
