package registry

import "time"

// txn batches changes to the writer's tables under r.mu and publishes them as
// one snapshot with one new index.
type txn struct {
	r       *Registry
	index   uint64 // the index this transaction's changes carry
	touched map[string]bool
	changed bool
	tables  tableSet // the snapshot tables this transaction changed
	out     []Entry  // this node's changed entries, for the broadcaster
}

// tableSet names tables of a snapshot. Each has an index of its own, the
// last change to it, as Consul's state store has per table, so that a
// blocking query wakes only for the data its answer holds.
type tableSet uint8

// The tables, by their place in Snapshot.tableIndex.
const (
	nodesAt = iota
	servicesAt
	checksAt
	kvAt
	numTables
)

const (
	tableNodes    tableSet = 1 << nodesAt
	tableServices tableSet = 1 << servicesAt
	tableChecks   tableSet = 1 << checksAt
	tableKV       tableSet = 1 << kvAt

	catalogTables = tableNodes | tableServices | tableChecks
)

// begin starts a transaction; r.mu must be held.
func (r *Registry) begin() *txn {
	return &txn{r: r, index: r.index + 1, touched: map[string]bool{}}
}

func (tx *txn) touch(name string) {
	tx.touched[name] = true
	tx.changed = true
}

// touchNode marks every service on node as changed: a node's address or
// node checks are part of each of its instances' answers.
func (tx *txn) touchNode(node string) {
	tx.changed = true
	tx.r.t.nodeServices.AscendGreaterOrEqual(&ServiceEntry{Node: node}, func(e *ServiceEntry) bool {
		if e.Node != node {
			return false
		}
		tx.touched[e.Name] = true
		return true
	})
}

func (tx *txn) upsertNode(n Node) {
	t := &tx.r.t
	e := &NodeEntry{Node: n, CreateIndex: tx.index, ModifyIndex: tx.index}
	if old, ok := t.nodes.Get(e); ok {
		e.CreateIndex = old.CreateIndex
	}
	t.nodes.ReplaceOrInsert(e)
	tx.tables |= tableNodes
	tx.touchNode(n.Name)
}

func (tx *txn) upsertService(node string, s Service) {
	t := &tx.r.t
	e := &ServiceEntry{Node: node, Service: s, CreateIndex: tx.index, ModifyIndex: tx.index}
	if old, ok := t.nodeServices.Get(e); ok {
		e.CreateIndex = old.CreateIndex
		if old.Name != s.Name {
			t.services.Delete(old)
			tx.touch(old.Name)
		}
	}
	t.services.ReplaceOrInsert(e)
	t.nodeServices.ReplaceOrInsert(e)
	tx.tables |= tableServices
	tx.touch(s.Name)
}

func (tx *txn) deleteService(node string, s Service) {
	t := &tx.r.t
	key := &ServiceEntry{Node: node, Service: Service{ID: s.ID, Name: s.Name}}
	if old, ok := t.nodeServices.Delete(key); ok {
		t.services.Delete(old)
		tx.tables |= tableServices
		tx.touch(old.Name)
	}
}

func (tx *txn) upsertCheck(node string, c Check) {
	t := &tx.r.t
	e := &CheckEntry{Node: node, Check: c, CreateIndex: tx.index, ModifyIndex: tx.index}
	if old, ok := t.checks.Get(e); ok {
		e.CreateIndex = old.CreateIndex
	}
	t.checks.ReplaceOrInsert(e)
	tx.tables |= tableChecks
	tx.touchCheck(node, c)
}

func (tx *txn) deleteCheck(node, serviceID, checkID string) {
	t := &tx.r.t
	if old, ok := t.checks.Delete(&CheckEntry{Node: node, Check: Check{ServiceID: serviceID, CheckID: checkID}}); ok {
		tx.tables |= tableChecks
		tx.touchCheck(node, old.Check)
	}
}

func (tx *txn) touchCheck(node string, c Check) {
	if c.ServiceID == "" {
		tx.touchNode(node)
		return
	}
	if c.ServiceName != "" {
		tx.touch(c.ServiceName)
		return
	}
	tx.changed = true
}

// commit publishes the changes, if any, as a new snapshot and wakes every
// reader waiting on the previous one.
func (tx *txn) commit() {
	r := tx.r
	if !tx.changed {
		return
	}
	r.index = tx.index
	for i := range numTables {
		if tx.tables&(1<<i) != 0 {
			r.tableIndex[i] = tx.index
		}
	}
	t := &r.t
	for name := range tx.touched {
		t.names.ReplaceOrInsert(nameEntry{name: name, index: tx.index})
	}
	next := &Snapshot{index: r.index, tableIndex: r.tableIndex, t: t.clone(), changed: make(chan struct{}), made: time.Now(), agreed: r.agreedKV}
	// The catalog's and the KV store's channels pass from snapshot to
	// snapshot until a change to their tables closes them, so that a KV
	// write does not wake the catalog's blocking queries, nor the reverse.
	prev := r.snap.Load()
	next.catalogChanged, next.kvChanged = make(chan struct{}), make(chan struct{})
	if prev != nil {
		if tx.tables&catalogTables == 0 {
			next.catalogChanged = prev.catalogChanged
		}
		if tx.tables&tableKV == 0 {
			next.kvChanged = prev.kvChanged
		}
	}
	r.snap.Store(next)
	if prev != nil {
		close(prev.changed)
		if next.catalogChanged != prev.catalogChanged {
			close(prev.catalogChanged)
		}
		if next.kvChanged != prev.kvChanged {
			close(prev.kvChanged)
		}
	}
	if len(tx.out) > 0 && r.bcast != nil {
		r.bcast(tx.out)
	}
}
