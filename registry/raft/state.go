package raft

import (
	"strings"
	"time"

	"github.com/google/btree"

	"github.com/pier-dev/pier/registry"
)

// KVEntry is one key of the agreed KV store, in Consul's DirEntry terms:
// the registry's own type, so that an agent's snapshot reads the agreed
// store's entries as they are (registry.AgreedKV). Immutable once in a
// published State.
type KVEntry = registry.KVEntry

// kvEqual reports whether a set would change nothing that a reader sees, in
// which case Consul keeps the ModifyIndex (and wakes nobody).
func kvEqual(e, o *KVEntry) bool {
	return e.Key == o.Key && string(e.Value) == string(o.Value) && e.Flags == o.Flags &&
		e.Session == o.Session && e.LockIndex == o.LockIndex
}

// Session behaviours on invalidation, as Consul's.
const (
	BehaviorRelease = "release"
	BehaviorDelete  = "delete"
)

// ServiceCheck names a check of a service for a session, as Consul's
// ServiceCheck.
type ServiceCheck struct {
	ID        string
	Namespace string `json:",omitempty"`
}

// Session is Consul's session. The checks it names are checked by the
// leader before the session is created and watched while it lives (health
// is gossip state, which the state machine cannot read deterministically).
type Session struct {
	ID            string
	Name          string
	Node          string
	LockDelay     time.Duration
	Behavior      string
	TTL           string `json:",omitempty"`
	NodeChecks    []string
	ServiceChecks []ServiceCheck
	CreateIndex   uint64
	ModifyIndex   uint64
}

// State is the agreed state as of one applied log index. It is immutable:
// readers load it without locks, and the state machine publishes a new one
// after each apply (the trees are copied on write, so a publish costs only
// the nodes that changed).
type State struct {
	index        uint64 // the last applied log index
	kvIndex      uint64 // the last index that changed the KV store (a delete included)
	sessionIndex uint64
	kvBytes      int64 // the keys' and values' bytes, for a size limit
	kv           *btree.BTreeG[*KVEntry]
	sessions     *btree.BTreeG[*Session]
	locks        *btree.BTreeG[lockRef]                // the keys each session holds
	catalogIndex uint64                                // the last index that changed ext
	ext          *btree.BTreeG[*registry.ExternalNode] // external nodes by name (catalog.go)
	changed      chan struct{}
}

// lockRef indexes a held key by its session.
type lockRef struct{ session, key string }

func lockLess(a, b lockRef) bool {
	return a.session < b.session || a.session == b.session && a.key < b.key
}

func kvLess(a, b *KVEntry) bool      { return a.Key < b.Key }
func sessionLess(a, b *Session) bool { return a.ID < b.ID }

func emptyState() *State {
	return &State{
		kv:       btree.NewG(16, kvLess),
		sessions: btree.NewG(16, sessionLess),
		locks:    btree.NewG(16, lockLess),
		ext:      btree.NewG(16, extLess),
		changed:  make(chan struct{}),
	}
}

// clone starts the next state: the trees are shared until written.
func (s *State) clone() *State {
	return &State{
		index: s.index, kvIndex: s.kvIndex, sessionIndex: s.sessionIndex, catalogIndex: s.catalogIndex, kvBytes: s.kvBytes,
		kv: s.kv.Clone(), sessions: s.sessions.Clone(), locks: s.locks.Clone(), ext: s.ext.Clone(),
		changed: make(chan struct{}),
	}
}

// Index is the last applied log index.
func (s *State) Index() uint64 { return s.index }

// KVIndex is the index of the last change to the KV store: the
// X-Consul-Index of every KV read, as Consul's table index (never 0).
func (s *State) KVIndex() uint64 { return max(s.kvIndex, 1) }

// KVBytes is the size of the keys and values held.
func (s *State) KVBytes() int64 { return s.kvBytes }

// SessionIndex is the index of the last change to the sessions (never 0).
func (s *State) SessionIndex() uint64 { return max(s.sessionIndex, 1) }

// Changed is closed when a newer State is published.
func (s *State) Changed() <-chan struct{} { return s.changed }

// KV returns one key.
func (s *State) KV(key string) (*KVEntry, bool) { return s.kv.Get(&KVEntry{Key: key}) }

// KVList returns the keys that start with prefix, in order.
func (s *State) KVList(prefix string) []*KVEntry {
	var out []*KVEntry
	s.kv.AscendGreaterOrEqual(&KVEntry{Key: prefix}, func(e *KVEntry) bool {
		if !strings.HasPrefix(e.Key, prefix) {
			return false
		}
		out = append(out, e)
		return true
	})
	return out
}

// Session returns one session.
func (s *State) Session(id string) (*Session, bool) { return s.sessions.Get(&Session{ID: id}) }

// Sessions returns every session, by ID.
func (s *State) Sessions() []*Session {
	out := make([]*Session, 0, s.sessions.Len())
	s.sessions.Ascend(func(e *Session) bool {
		out = append(out, e)
		return true
	})
	return out
}

// NodeSessions returns the sessions of one node.
func (s *State) NodeSessions(node string) []*Session {
	var out []*Session
	s.sessions.Ascend(func(e *Session) bool {
		if e.Node == node {
			out = append(out, e)
		}
		return true
	})
	return out
}

// heldBy lists the keys a session holds.
func (s *State) heldBy(session string) []string {
	var out []string
	s.locks.AscendGreaterOrEqual(lockRef{session: session}, func(l lockRef) bool {
		if l.session != session {
			return false
		}
		out = append(out, l.key)
		return true
	})
	return out
}
