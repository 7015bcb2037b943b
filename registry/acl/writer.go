package acl

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Where the API's ACL objects are written. Security state must not be last
// writer wins (DESIGN.md, "Two kinds of state"): with servers, the agent
// gives the Authorizer a Writer that applies through the Raft leader (the
// API routes every ACL write to the leader first, so the Writer runs
// there), and the registry's snapshot shows the result once the servers'
// state is mirrored into it (registry.SetAgreed carries
// registry.AgreedReservedPrefix). Without one, the objects go to the gossip
// KV store, as before the servers existed: fine for one node or -dev, but
// two nodes may then each accept a write the other refuses.

// Verbs of an Op: registry/raft's names (Consul's txn verbs), so a Raft
// writer passes them on as they are.
const (
	OpSet            = "set"
	OpDelete         = "delete"
	OpCheckNotExists = "check-not-exists" // fails when the key exists
	OpCheckIndex     = "check-index"      // fails unless the key's ModifyIndex is Index
)

// Op is one operation of Writer.Txn.
type Op struct {
	Verb  string
	Key   string
	Value []byte
	Index uint64 // OpCheckIndex
}

// Writer writes the ACL keys (all under registry.AgreedReservedPrefix).
// The Authorizer calls it with its lock held, one write at a time.
type Writer interface {
	// Index answers the index of the newest state this writer knows (the
	// Raft KV index, as registry.Agreed.KVIndex counts it); the Authorizer
	// waits for the registry's agreed state to reach it before it checks a
	// write against its table, and after it writes, so the answer shows the
	// write. 0: the registry's own store is the state (nothing to wait for).
	Index() uint64
	// Put writes key; Delete deletes it (no error when it does not exist).
	Put(key string, value []byte) error
	Delete(key string) error
	// Txn applies ops all or none: false, with no error and nothing
	// written, when a check failed.
	Txn(ops []Op) (bool, error)
}

// SetWriter makes the Authorizer write through w (nil: the gossip KV
// store, the default). A writer of its own means the objects are the
// servers': until the registry has their state (registry.SetAgreed), only
// the configuration's tokens resolve, and the gossip store's ACL keys
// (from before the servers) never do. Call it once, after Attach and
// before the first request.
func (a *Authorizer) SetWriter(w Writer) {
	a.agreedOnly = w != nil
	if w == nil {
		w = gossipWriter{a.reg}
	}
	a.w = w
}

// syncTimeout bounds the wait for the registry to show the writer's state:
// on a leader its own mirror, which follows each apply at once, so only a
// broken wiring (no mirror) waits this long.
const syncTimeout = 10 * time.Second

// waitAgreed waits until the registry shows the writer's newest state;
// false after syncTimeout.
func (a *Authorizer) waitAgreed() bool {
	idx := a.w.Index()
	if idx == 0 {
		return true
	}
	deadline := time.NewTimer(syncTimeout)
	defer deadline.Stop()
	for {
		snap := a.reg.Snapshot() // before the check: a later SetAgreed closes its Changed
		if ag, ok := a.reg.Agreed(); ok && max(ag.KVIndex, 1) >= idx {
			return true
		}
		select {
		case <-snap.Changed():
		case <-deadline.C:
			a.log.Warn("acl: the servers' state did not reach this agent's registry in time (is the mirror running?)", "index", idx)
			return false
		}
	}
}

// syncLocked answers the table a write is checked against: the writer's
// newest state; a.mu held.
func (a *Authorizer) syncLocked() *aclTable {
	a.waitAgreed()
	return a.refreshLocked()
}

// put writes one object and answers the table that holds it (once the
// registry shows the write); a.mu held.
func (a *Authorizer) put(key string, v any) (*aclTable, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if err := a.w.Put(key, b); err != nil {
		return nil, err
	}
	return a.syncLocked(), nil
}

// del deletes one object; a.mu held.
func (a *Authorizer) del(key string) error {
	err := a.w.Delete(key)
	a.syncLocked()
	return err
}

// gossipWriter is the Writer without servers: the registry's gossip KV.
type gossipWriter struct{ reg *registry.Registry }

func (g gossipWriter) Index() uint64 { return 0 }

func (g gossipWriter) Put(key string, value []byte) error {
	_, err := g.reg.KVPut(key, value, 0, nil)
	return err
}

func (g gossipWriter) Delete(key string) error {
	_, err := g.reg.KVDelete(key, false, nil)
	return err
}

// Txn checks against this node's store, then writes: atomic on this node
// (the Authorizer's lock serializes its writes), not across the cluster.
func (g gossipWriter) Txn(ops []Op) (bool, error) {
	snap := g.reg.Snapshot()
	for _, op := range ops {
		e, ok := snap.KV(op.Key)
		switch op.Verb {
		case OpCheckNotExists:
			if ok {
				return false, nil
			}
		case OpCheckIndex:
			if !ok || e.ModifyIndex != op.Index {
				return false, nil
			}
		case OpSet, OpDelete:
		default:
			return false, fmt.Errorf("acl: unknown operation %q", op.Verb)
		}
	}
	var errs []error
	for _, op := range ops {
		switch op.Verb {
		case OpSet:
			errs = append(errs, g.Put(op.Key, op.Value))
		case OpDelete:
			errs = append(errs, g.Delete(op.Key))
		}
	}
	return true, errors.Join(errs...)
}
