package raft

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/registry"
)

// The log holds commands; the state machine applies each to the newest
// State and publishes the result. Everything an apply reads is in the
// command or the State, so every server computes the same State, with one
// exception that Consul makes too: lock-delay deadlines are taken from the
// local clock when a session is invalidated, and live only in memory.

type cmdType uint8

const (
	cmdKV                cmdType = iota + 1 // one KV operation
	cmdTxn                                  // KV operations applied all or none
	cmdSessionCreate                        // Session, validated by the leader
	cmdSessionDestroy                       // ID
	cmdCatalogRegister                      // Register, an external node (catalog.go)
	cmdCatalogDeregister                    // Deregister
)

type command struct {
	Type       cmdType
	Ops        []KVOp             `json:",omitempty"`
	Session    *Session           `json:",omitempty"`
	ID         string             `json:",omitempty"`
	Register   *RegisterRequest   `json:",omitempty"`
	Deregister *DeregisterRequest `json:",omitempty"`
}

// KV verbs, Consul's names (api.KVOp).
const (
	KVSet            = "set"
	KVCAS            = "cas"
	KVLock           = "lock"
	KVUnlock         = "unlock"
	KVGet            = "get"
	KVGetTree        = "get-tree"
	KVCheckIndex     = "check-index"
	KVCheckSession   = "check-session"
	KVCheckNotExists = "check-not-exists"
	KVDelete         = "delete"
	KVDeleteTree     = "delete-tree"
	KVDeleteCAS      = "delete-cas"
)

// KVOp is one KV operation: a single write of the KV API or one operation
// of a transaction.
type KVOp struct {
	Verb    string
	Key     string
	Value   []byte `json:",omitempty"`
	Flags   uint64 `json:",omitempty"`
	Index   uint64 `json:",omitempty"` // cas, delete-cas, check-index
	Session string `json:",omitempty"` // lock, unlock, check-session
}

// TxnError is Consul's: which operation failed and why.
type TxnError struct {
	OpIndex int
	What    string
}

// Result is what an applied command answers.
type Result struct {
	// OK: a single KV write happened (false: a failed cas, lock or unlock).
	OK bool
	// Entries: a transaction's results in Consul's order (values only for
	// reads); Errors: why it was rolled back.
	Entries []*KVEntry
	Errors  []TxnError
	// Err is an error of the request itself (an unknown session, an
	// unknown verb): Consul's 500.
	Err error
}

// MaxLockDelay is Consul's ceiling on a session's lock delay.
const MaxLockDelay = 60 * time.Second

// FSM is the state machine hashicorp/raft drives.
type FSM struct {
	cur atomic.Pointer[State]
	now func() time.Time

	mu        sync.Mutex
	lockDelay map[string]time.Time // key → until when no session may acquire it
}

// NewFSM starts from an empty state; now is the clock of lock delays (nil:
// time.Now).
func NewFSM(now func() time.Time) *FSM {
	if now == nil {
		now = time.Now
	}
	f := &FSM{now: now, lockDelay: map[string]time.Time{}}
	f.cur.Store(emptyState())
	return f
}

// State answers the newest applied state.
func (f *FSM) State() *State { return f.cur.Load() }

// LockDelay answers until when key may not be acquired (zero: it may).
func (f *FSM) LockDelay(key string) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.lockDelay[key]
	if ok && !t.After(f.now()) {
		delete(f.lockDelay, key)
		return time.Time{}
	}
	return t
}

func (f *FSM) publish(s *State) {
	old := f.cur.Swap(s)
	close(old.changed)
}

// Apply applies one committed log entry; raft calls it from one goroutine.
func (f *FSM) Apply(l *hraft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		// Every server fails the same way on the same entry, so the states
		// stay equal; the leader's caller sees the error.
		return Result{Err: fmt.Errorf("raft: log entry %d does not decode: %w", l.Index, err)}
	}
	base := f.cur.Load()
	w := newWriter(base, l.Index)
	var res Result
	switch c.Type {
	case cmdKV:
		if len(c.Ops) != 1 {
			res.Err = errors.New("raft: a KV command holds one operation")
			break
		}
		res.OK, res.Err = w.kv(c.Ops[0])
	case cmdTxn:
		res.Entries, res.Errors = w.txn(c.Ops)
		if len(res.Errors) > 0 {
			// All or nothing: only the applied index moves on.
			res.Entries, w = nil, newWriter(base, l.Index)
		}
	case cmdSessionCreate:
		res.Err = w.sessionCreate(c.Session)
		res.OK = res.Err == nil
	case cmdSessionDestroy:
		res.OK = f.sessionDestroy(w, c.ID)
	case cmdCatalogRegister, cmdCatalogDeregister:
		if c.Type == cmdCatalogRegister {
			res.Err = w.register(c.Register)
		} else {
			res.Err = w.deregister(c.Deregister)
		}
		if res.Err != nil {
			w = newWriter(base, l.Index) // all or nothing, as a transaction
		}
		res.OK = res.Err == nil
	default:
		res.Err = fmt.Errorf("raft: unknown command type %d", c.Type)
	}
	f.publish(w.s)
	return res
}

// writer applies changes to a State being built, at log index idx.
type writer struct {
	s   *State
	idx uint64
}

func newWriter(base *State, idx uint64) *writer {
	w := &writer{s: base.clone(), idx: idx}
	w.s.index = idx
	return w
}

// put stores e (its CreateIndex kept from old, if any) unless nothing a
// reader sees changed, keeping the lock index up to date.
func (w *writer) put(e *KVEntry) {
	old, had := w.s.kv.Get(e)
	if had {
		e.CreateIndex = old.CreateIndex
		if kvEqual(old, e) {
			e.ModifyIndex = old.ModifyIndex
			return
		}
		if old.Session != "" {
			w.s.locks.Delete(lockRef{old.Session, old.Key})
		}
		w.s.kvBytes -= entryBytes(old)
	} else {
		e.CreateIndex = w.idx
	}
	w.s.kvBytes += entryBytes(e)
	e.ModifyIndex = w.idx
	if e.Session != "" {
		w.s.locks.ReplaceOrInsert(lockRef{e.Session, e.Key})
	}
	w.s.kv.ReplaceOrInsert(e)
	w.s.kvIndex = w.idx
}

func (w *writer) del(key string) bool {
	old, had := w.s.kv.Delete(&KVEntry{Key: key})
	if !had {
		return false
	}
	if old.Session != "" {
		w.s.locks.Delete(lockRef{old.Session, key})
	}
	w.s.kvBytes -= entryBytes(old)
	w.s.kvIndex = w.idx
	return true
}

func entryBytes(e *KVEntry) int64 { return int64(len(e.Key) + len(e.Value)) }

// set writes a value and keeps the key's lock as it is, as Consul's set.
func (w *writer) set(op KVOp) *KVEntry {
	e := &KVEntry{Key: op.Key, Value: op.Value, Flags: op.Flags}
	if old, ok := w.s.kv.Get(e); ok {
		e.Session, e.LockIndex = old.Session, old.LockIndex
	}
	w.put(e)
	return e
}

// kv applies one write; it reports whether it happened.
func (w *writer) kv(op KVOp) (bool, error) {
	if rest, ok := strings.CutPrefix(op.Key, SessionBoundPrefix); ok && (op.Verb == KVSet || op.Verb == KVCAS) {
		sess, _, _ := strings.Cut(rest, "/")
		if _, ok := w.s.Session(sess); !ok {
			return false, fmt.Errorf("invalid session %q", sess)
		}
	}
	switch op.Verb {
	case KVSet:
		w.set(op)
		return true, nil
	case KVCAS:
		old, ok := w.s.KV(op.Key)
		if op.Index == 0 && ok || op.Index != 0 && (!ok || old.ModifyIndex != op.Index) {
			return false, nil
		}
		w.set(op)
		return true, nil
	case KVDelete:
		w.del(op.Key)
		return true, nil
	case KVDeleteCAS:
		old, ok := w.s.KV(op.Key)
		if !ok {
			return true, nil // nothing to delete is no conflict, as Consul
		}
		if old.ModifyIndex != op.Index {
			return false, nil
		}
		w.del(op.Key)
		return true, nil
	case KVDeleteTree:
		// The agent's own keys (the ACL store) go only with a prefix of
		// their own: a user's delete of "" must not take the ACLs with it,
		// as the gossip store's recursive delete does not.
		own := strings.HasPrefix(op.Key, registry.ReservedKVPrefix)
		for _, e := range w.s.KVList(op.Key) {
			if own || !strings.HasPrefix(e.Key, registry.ReservedKVPrefix) {
				w.del(e.Key)
			}
		}
		return true, nil
	case KVLock:
		return w.lock(op)
	case KVUnlock:
		return w.unlock(op)
	}
	return false, fmt.Errorf("unknown KV operation %q", op.Verb)
}

func (w *writer) lock(op KVOp) (bool, error) {
	if op.Session == "" {
		return false, errors.New("missing session")
	}
	if _, ok := w.s.Session(op.Session); !ok {
		return false, fmt.Errorf("invalid session %q", op.Session)
	}
	e := &KVEntry{Key: op.Key, Value: op.Value, Flags: op.Flags, Session: op.Session, LockIndex: 1}
	if old, ok := w.s.KV(op.Key); ok {
		switch old.Session {
		case op.Session: // held already: the value is updated
			e.LockIndex = old.LockIndex
		case "":
			e.LockIndex = old.LockIndex + 1
		default:
			return false, nil
		}
	}
	w.put(e)
	return true, nil
}

func (w *writer) unlock(op KVOp) (bool, error) {
	if op.Session == "" {
		return false, errors.New("missing session")
	}
	old, ok := w.s.KV(op.Key)
	if !ok || old.Session != op.Session {
		return false, nil
	}
	w.put(&KVEntry{Key: op.Key, Value: op.Value, Flags: op.Flags, LockIndex: old.LockIndex})
	return true, nil
}

// txn applies ops in order, collecting every error as Consul does; the
// caller discards the state if any.
func (w *writer) txn(ops []KVOp) ([]*KVEntry, []TxnError) {
	var out []*KVEntry
	var errs []TxnError
	fail := func(i int, format string, args ...any) {
		errs = append(errs, TxnError{OpIndex: i, What: fmt.Sprintf(format, args...)})
	}
	// stripped is a write's result: Consul answers the entry without its
	// value.
	stripped := func(key string) {
		if e, ok := w.s.KV(key); ok {
			c := *e
			c.Value = nil
			out = append(out, &c)
		}
	}
	for i, op := range ops {
		switch op.Verb {
		case KVGet:
			if e, ok := w.s.KV(op.Key); ok {
				out = append(out, e)
			} else {
				fail(i, "key %q doesn't exist", op.Key)
			}
		case KVGetTree:
			out = append(out, w.s.KVList(op.Key)...)
		case KVCheckIndex:
			if e, ok := w.s.KV(op.Key); !ok {
				fail(i, "failed to check index, key %q doesn't exist", op.Key)
			} else if e.ModifyIndex != op.Index {
				fail(i, "failed index check for key %q, current modify index %d != %d", op.Key, e.ModifyIndex, op.Index)
			} else {
				stripped(op.Key)
			}
		case KVCheckSession:
			if e, ok := w.s.KV(op.Key); !ok {
				fail(i, "failed to check session, key %q doesn't exist", op.Key)
			} else if e.Session != op.Session {
				fail(i, "failed session check for key %q, current session %q != %q", op.Key, e.Session, op.Session)
			} else {
				stripped(op.Key)
			}
		case KVCheckNotExists:
			if _, ok := w.s.KV(op.Key); ok {
				fail(i, "key %q exists", op.Key)
			}
		default:
			ok, err := w.kv(op)
			switch {
			case err != nil:
				fail(i, "%v", err)
			case !ok && (op.Verb == KVCAS):
				fail(i, "failed to set key %q, index is stale", op.Key)
			case !ok && op.Verb == KVDeleteCAS:
				fail(i, "failed to delete key %q, index is stale", op.Key)
			case !ok && op.Verb == KVLock:
				fail(i, "failed to lock key %q, lock is already held", op.Key)
			case !ok && op.Verb == KVUnlock:
				fail(i, "failed to unlock key %q, lock isn't held, or is held by another session", op.Key)
			case op.Verb == KVSet || op.Verb == KVCAS || op.Verb == KVLock || op.Verb == KVUnlock:
				stripped(op.Key)
			}
		}
	}
	return out, errs
}

func (w *writer) sessionCreate(s *Session) error {
	if s == nil || s.ID == "" {
		return errors.New("missing session ID")
	}
	if _, ok := w.s.Session(s.ID); ok {
		return fmt.Errorf("session %q exists", s.ID)
	}
	c := *s
	switch c.Behavior {
	case "":
		c.Behavior = BehaviorRelease
	case BehaviorRelease, BehaviorDelete:
	default:
		return fmt.Errorf("invalid session behavior %q", c.Behavior)
	}
	c.CreateIndex, c.ModifyIndex = w.idx, w.idx
	w.s.sessions.ReplaceOrInsert(&c)
	w.s.sessionIndex = w.idx
	return nil
}

// sessionDestroy removes a session and frees what it holds by its
// behaviour, starting each key's lock delay; false if there was no such
// session.
func (f *FSM) sessionDestroy(w *writer, id string) bool {
	s, ok := w.s.sessions.Delete(&Session{ID: id})
	if !ok {
		return false
	}
	w.s.sessionIndex = w.idx
	delay := min(s.LockDelay, MaxLockDelay)
	now := f.now()
	until := now.Add(delay)
	f.mu.Lock()
	if len(f.lockDelay) > 1024 {
		for k, t := range f.lockDelay {
			if !t.After(now) {
				delete(f.lockDelay, k)
			}
		}
	}
	f.mu.Unlock()
	for _, key := range w.s.heldBy(id) {
		e, _ := w.s.KV(key)
		if s.Behavior == BehaviorDelete {
			w.del(key)
		} else {
			c := *e
			c.Session = ""
			w.put(&c)
		}
		if delay > 0 {
			f.mu.Lock()
			f.lockDelay[key] = until
			f.mu.Unlock()
		}
	}
	for _, m := range w.s.KVList(SessionBoundPrefix + id + "/") {
		for _, key := range strings.Split(string(m.Value), "\n") {
			if key != "" {
				w.del(key)
			}
		}
		w.del(m.Key)
	}
	return true
}

// SessionBoundPrefix holds the keys that go with a session, as Consul's
// prepared queries bound to a session do: the entry at
// SessionBoundKey(session, name) lists keys, one a line, that the
// session's destruction deletes with the entry itself, whatever the
// session's behaviour. Writing such an entry fails with "invalid session"
// when the session does not exist, so that a transaction that writes one
// cannot bind keys to a session that is already gone.
const SessionBoundPrefix = registry.ReservedKVPrefix + "session-bound/"

// SessionBoundKey is the key of the list of keys named name that go with
// session.
func SessionBoundKey(session, name string) string {
	return SessionBoundPrefix + session + "/" + name
}

// The snapshot is a JSON stream: a header, then each key, each session and
// each external node. A snapshot from before external nodes has no Nodes
// nor CatalogIndex in its header, and restores with none.
type snapHeader struct {
	Index, KVIndex, SessionIndex uint64
	KVs, Sessions                int
	CatalogIndex                 uint64 `json:",omitempty"`
	Nodes                        int    `json:",omitempty"`
}

type fsmSnapshot struct{ s *State }

// Snapshot captures the newest state; it is immutable, so Persist may run
// while applies go on.
func (f *FSM) Snapshot() (hraft.FSMSnapshot, error) { return fsmSnapshot{f.cur.Load()}, nil }

func (s fsmSnapshot) Persist(sink hraft.SnapshotSink) error {
	bw := bufio.NewWriter(sink)
	enc := json.NewEncoder(bw)
	err := enc.Encode(snapHeader{Index: s.s.index, KVIndex: s.s.kvIndex, SessionIndex: s.s.sessionIndex,
		KVs: s.s.kv.Len(), Sessions: s.s.sessions.Len(), CatalogIndex: s.s.catalogIndex, Nodes: s.s.ext.Len()})
	s.s.kv.Ascend(func(e *KVEntry) bool {
		err = cmpErr(err, enc.Encode(e))
		return err == nil
	})
	s.s.sessions.Ascend(func(e *Session) bool {
		err = cmpErr(err, enc.Encode(e))
		return err == nil
	})
	s.s.ext.Ascend(func(e *registry.ExternalNode) bool {
		err = cmpErr(err, enc.Encode(e))
		return err == nil
	})
	if err = cmpErr(err, bw.Flush()); err != nil {
		sink.Cancel()
		return fmt.Errorf("raft: snapshot: %w", err)
	}
	return sink.Close()
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func (fsmSnapshot) Release() {}

// Restore replaces the state with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	dec := json.NewDecoder(bufio.NewReader(rc))
	var h snapHeader
	if err := dec.Decode(&h); err != nil {
		return fmt.Errorf("raft: restore: header: %w", err)
	}
	s := emptyState()
	s.index, s.kvIndex, s.sessionIndex, s.catalogIndex = h.Index, h.KVIndex, h.SessionIndex, h.CatalogIndex
	for i := 0; i < h.KVs; i++ {
		e := new(KVEntry)
		if err := dec.Decode(e); err != nil {
			return fmt.Errorf("raft: restore: key %d: %w", i, err)
		}
		s.kv.ReplaceOrInsert(e)
		s.kvBytes += entryBytes(e)
		if e.Session != "" {
			s.locks.ReplaceOrInsert(lockRef{e.Session, e.Key})
		}
	}
	for i := 0; i < h.Sessions; i++ {
		e := new(Session)
		if err := dec.Decode(e); err != nil {
			return fmt.Errorf("raft: restore: session %d: %w", i, err)
		}
		s.sessions.ReplaceOrInsert(e)
	}
	for i := 0; i < h.Nodes; i++ {
		e := new(registry.ExternalNode)
		if err := dec.Decode(e); err != nil || e.Node.Name == "" {
			return fmt.Errorf("raft: restore: external node %d: %v", i, cmpErr(err, errors.New("no name")))
		}
		s.ext.ReplaceOrInsert(e)
	}
	if err := dec.Decode(new(json.RawMessage)); err != io.EOF {
		return errors.New("raft: restore: data after the last record")
	}
	f.publish(s)
	return nil
}

// Encode makes a log entry's data.
func encode(c command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("raft: encoding a command: %w", err)
	}
	return b, nil
}
