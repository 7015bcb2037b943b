package registry

import "time"

// txn batches changes to the writer's tables under r.mu and publishes them as
// one snapshot with one new index.
type txn struct {
	r       *Registry
	index   uint64 // the index this transaction's changes carry
	touched map[string]bool
	changed bool
	out     []Entry  // this node's changed entries, for the broadcaster
	kv      []string // keys of the KV store changed (already persisted)
}

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
	tx.touch(s.Name)
}

func (tx *txn) deleteService(node string, s Service) {
	t := &tx.r.t
	key := &ServiceEntry{Node: node, Service: Service{ID: s.ID, Name: s.Name}}
	if old, ok := t.nodeServices.Delete(key); ok {
		t.services.Delete(old)
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
	tx.touchCheck(node, c)
}

func (tx *txn) deleteCheck(node, serviceID, checkID string) {
	t := &tx.r.t
	if old, ok := t.checks.Delete(&CheckEntry{Node: node, Check: Check{ServiceID: serviceID, CheckID: checkID}}); ok {
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
	if len(tx.kv) > 0 {
		r.kvIndex = tx.index
	}
	t := &r.t
	for name := range tx.touched {
		t.names.ReplaceOrInsert(nameEntry{name: name, index: tx.index})
	}
	next := &Snapshot{index: r.index, kvIndex: max(r.kvIndex, 1), t: t.clone(), changed: make(chan struct{}), made: time.Now()}
	if prev := r.snap.Swap(next); prev != nil {
		close(prev.changed)
	}
	if len(tx.out) > 0 && r.bcast != nil {
		r.bcast(tx.out)
	}
}
