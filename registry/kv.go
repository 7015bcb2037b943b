package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// The KV store is replicated by the same gossip as the catalog, but every
// node may write every key: concurrent writes resolve by last writer wins on
// the writers' hybrid logical clocks, with the node name breaking ties, so
// every node settles on the same value. It offers no linearizable reads, no
// sessions and no locks.

// KVTombstoneTTL is how long a deleted key is remembered, so that a node
// that was away for less than this cannot bring it back; Consul's reconnect
// timeout, after which such a node has been reaped anyway.
const KVTombstoneTTL = 72 * time.Hour

// The largest key and value accepted, as in Consul.
const (
	MaxKVKey   = 512
	MaxKVValue = 512 << 10
)

// ReservedKVPrefix holds the agent's own replicated state (ACL tokens,
// policies and roles, registry/acl): the KV API neither shows nor writes
// keys under it, and a recursive delete of a prefix outside it leaves it
// alone.
const ReservedKVPrefix = "_pier/"

// AgreedReservedPrefix is the part of ReservedKVPrefix that the servers
// agree on (the ACL store: security state must not be last-writer-wins).
// Once the agent has the agreed store (SetAgreed), its keys come from there,
// like the user's keys; the rest of ReservedKVPrefix stays gossip's.
const AgreedReservedPrefix = ReservedKVPrefix + "acl/"

// ACMEKVPrefix holds the front door's ACME storage (proxy.tls.acme:
// certificates, keys, locks, DNS-01 records), written through the servers'
// Raft log only. It is agreed too, so that the snapshot shows what the
// servers hold (the DNS server answers ACMEChallengeKVPrefix from it).
const ACMEKVPrefix = ReservedKVPrefix + "acme/"

// ACMEChallengeKVPrefix holds the DNS-01 TXT records: one key per value,
// under <ACMEChallengeKVPrefix><_acme-challenge.name>/.
const ACMEChallengeKVPrefix = ACMEKVPrefix + "dns/"

// gossipKey reports whether key belongs to the gossip store once the agent
// has the agreed one: the reserved keys outside AgreedReservedPrefix and
// ACMEKVPrefix.
func gossipKey(key string) bool {
	return strings.HasPrefix(key, ReservedKVPrefix) && !strings.HasPrefix(key, AgreedReservedPrefix) && !strings.HasPrefix(key, ACMEKVPrefix)
}

// ErrKVFull is a write refused because the store would exceed
// Config.KVMaxBytes.
var ErrKVFull = errors.New("the KV store is full")

// ErrKVAgreed is a gossip write of a key the agreed store owns (outside
// ReservedKVPrefix, or under AgreedReservedPrefix) once the
// agent has the servers' agreed store (SetAgreed): such a key is the
// servers', written through Raft, and a gossip write of it would be
// answered but never read.
var ErrKVAgreed = errors.New("the KV store is agreed through the servers: write through Raft")

// KVValue is the payload of a KV entry.
type KVValue struct {
	Value []byte `json:"v,omitempty"`
	Flags uint64 `json:"f,omitempty"`
}

// KVEntry is one key in a snapshot, immutable once published. Keys of the
// agreed store (Agreed.KV) carry their Raft indexes and lock; the gossip
// store's keys have neither Session nor LockIndex.
type KVEntry struct {
	Key         string
	Value       []byte `json:",omitempty"`
	Flags       uint64 `json:",omitempty"`
	Session     string `json:",omitempty"` // the session holding the key's lock, if any
	LockIndex   uint64 `json:",omitempty"` // how many times the lock was acquired
	CreateIndex uint64
	ModifyIndex uint64
	version     uint64 // gossip only: the writer's clock
	writer      string // gossip only
}

func kvLess(a, b *KVEntry) bool { return a.Key < b.Key }

// newer reports whether a write (version v by node n) wins over one
// (cv by cn): last writer wins, the node name breaks a tie.
func newer(v uint64, n string, cv uint64, cn string) bool {
	return v > cv || v == cv && n > cn
}

// KVIndex is the index of the last change to the KV store (never 0).
func (s *Snapshot) KVIndex() uint64 { return s.tableIdx(kvAt) }

// KVChanged is closed when a newer snapshot changes the KV store.
func (s *Snapshot) KVChanged() <-chan struct{} { return s.kvChanged }

// KV returns one key: from the agreed store once there is one (SetAgreed),
// except under ReservedKVPrefix outside AgreedReservedPrefix, which stays
// the gossip store's.
func (s *Snapshot) KV(key string) (*KVEntry, bool) {
	if s.agreed != nil && !gossipKey(key) {
		return s.agreed.KV(key)
	}
	return s.t.kv.Get(&KVEntry{Key: key})
}

// KVList returns the keys that start with prefix, in order, taking each
// from the store that owns it (see KV).
func (s *Snapshot) KVList(prefix string) []*KVEntry {
	if s.agreed == nil {
		return s.gossipKVList(prefix)
	}
	var out []*KVEntry
	s.agreed.AscendKV(prefix, func(e *KVEntry) bool {
		if !strings.HasPrefix(e.Key, prefix) {
			return false
		}
		if !gossipKey(e.Key) {
			out = append(out, e)
		}
		return true
	})
	// The gossip store's part: the reserved keys the prefix spans ("",
	// "_", "_pier/x"...), but not the agreed ones among them.
	var res []*KVEntry
	switch {
	case strings.HasPrefix(prefix, ReservedKVPrefix):
		res = s.gossipKVList(prefix)
	case strings.HasPrefix(ReservedKVPrefix, prefix):
		res = s.gossipKVList(ReservedKVPrefix)
	}
	res = slices.DeleteFunc(res, func(e *KVEntry) bool { return !gossipKey(e.Key) })
	if len(res) == 0 {
		return out
	}
	merged := make([]*KVEntry, 0, len(out)+len(res))
	i, j := 0, 0
	for i < len(out) && j < len(res) {
		if out[i].Key < res[j].Key {
			merged = append(merged, out[i])
			i++
		} else {
			merged = append(merged, res[j])
			j++
		}
	}
	merged = append(merged, out[i:]...)
	return append(merged, res[j:]...)
}

func (s *Snapshot) gossipKVList(prefix string) []*KVEntry {
	var out []*KVEntry
	s.t.kv.AscendGreaterOrEqual(&KVEntry{Key: prefix}, func(e *KVEntry) bool {
		if !strings.HasPrefix(e.Key, prefix) {
			return false
		}
		out = append(out, e)
		return true
	})
	return out
}

// GossipKV answers the gossip store's keys outside ReservedKVPrefix: what
// was written before the KV moved into the servers' Raft state, which the
// leader imports once (registry/raft ImportGossipKV).
func (s *Snapshot) GossipKV() []*KVEntry {
	var out []*KVEntry
	for _, e := range s.gossipKVList("") {
		if !strings.HasPrefix(e.Key, ReservedKVPrefix) {
			out = append(out, e)
		}
	}
	return out
}

// KVKeys lists the keys under prefix; with a separator, keys are cut after
// the first separator past the prefix and listed once, as Consul's ?keys
// with ?separator= does.
func (s *Snapshot) KVKeys(prefix, sep string) []string {
	var out []string
	for _, e := range s.KVList(prefix) {
		k := e.Key
		if sep != "" {
			if i := strings.Index(k[len(prefix):], sep); i >= 0 {
				k = k[:len(prefix)+i+len(sep)]
			}
		}
		if len(out) == 0 || out[len(out)-1] != k {
			out = append(out, k)
		}
	}
	return out
}

// ValidKey checks a key as the KV API accepts it.
func ValidKey(key string) error {
	switch {
	case key == "":
		return &FieldError{Field: "key", Msg: "missing"}
	case len(key) > MaxKVKey:
		return &FieldError{Field: "key", Msg: fmt.Sprintf("too long (%d bytes, limit %d)", len(key), MaxKVKey)}
	case strings.ContainsAny(key, "\x00"):
		return &FieldError{Field: "key", Msg: "contains a NUL byte"}
	case !utf8.ValidString(key):
		// Consul's keys are UTF-8 strings, and JSON (gossip, the data dir)
		// would carry any other byte as U+FFFD: the key would change.
		return &FieldError{Field: "key", Msg: fmt.Sprintf("%q is not valid UTF-8", key)}
	}
	return nil
}

// KVPut writes key. With cas set, the write happens only if the key's
// ModifyIndex on this node equals *cas (0: only if the key does not exist);
// it reports whether it happened.
func (r *Registry) KVPut(key string, value []byte, flags uint64, cas *uint64) (bool, error) {
	if err := ValidKey(key); err != nil {
		return false, err
	}
	if len(value) > MaxKVValue {
		return false, &FieldError{Field: "value", Msg: fmt.Sprintf("too large (%d bytes, limit %d)", len(value), MaxKVValue)}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.gossipKVWritable(key); err != nil {
		return false, err
	}
	cur, ok := r.t.kv.Get(&KVEntry{Key: key})
	if cas != nil && (*cas == 0 && ok || *cas != 0 && (!ok || cur.ModifyIndex != *cas)) {
		return false, nil
	}
	if max := r.cfg.KVMaxBytes; max > 0 {
		size := r.kvBytes + int64(len(key)+len(value))
		if ok {
			size -= int64(len(cur.Key) + len(cur.Value))
		}
		if size > max {
			return false, fmt.Errorf("registry: %w: %d bytes with this write, limit %d", ErrKVFull, size, max)
		}
	}
	e := Entry{Node: r.cfg.NodeName, Kind: KindKV, Key: key, Version: r.clock.next(), KV: &KVValue{Value: append([]byte(nil), value...), Flags: flags}}
	// Durable before it is visible: a write the disk refused is neither
	// answered true, nor read, nor gossiped.
	if err := r.saveKV(e); err != nil {
		return false, err
	}
	tx := r.begin()
	tx.applyKV(e)
	tx.out = append(tx.out, e)
	tx.commit()
	return true, nil
}

// KVDelete deletes key, or every key under it with recurse. With cas, a
// single key is deleted only if its ModifyIndex equals *cas.
func (r *Registry) KVDelete(key string, recurse bool, cas *uint64) (bool, error) {
	if !recurse {
		if err := ValidKey(key); err != nil {
			return false, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.gossipKVWritable(key); err != nil {
		return false, err
	}
	var keys []string
	if recurse {
		r.t.kv.AscendGreaterOrEqual(&KVEntry{Key: key}, func(e *KVEntry) bool {
			if !strings.HasPrefix(e.Key, key) {
				return false
			}
			if !strings.HasPrefix(e.Key, ReservedKVPrefix) || strings.HasPrefix(key, ReservedKVPrefix) {
				keys = append(keys, e.Key)
			}
			return true
		})
	} else {
		cur, ok := r.t.kv.Get(&KVEntry{Key: key})
		if cas != nil && (!ok || cur.ModifyIndex != *cas) {
			return false, nil
		}
		if ok {
			keys = []string{key}
		}
	}
	tx := r.begin()
	defer tx.commit()
	for i, k := range keys {
		e := Entry{Node: r.cfg.NodeName, Kind: KindKV, Key: k, Version: r.clock.next(), Deleted: true, at: r.clock.now()}
		if err := r.saveKV(e); err != nil {
			// The keys deleted so far are deleted on disk: they stay
			// deleted in memory too, and the caller learns how far it got.
			if recurse {
				return false, fmt.Errorf("%w (%d of the %d keys under %q were deleted)", err, i, len(keys), key)
			}
			return false, err
		}
		tx.applyKV(e)
		tx.out = append(tx.out, e)
	}
	return true, nil
}

// gossipKVWritable refuses a local write of key (or of the keys under it)
// that the agreed store owns; r.mu held.
func (r *Registry) gossipKVWritable(key string) error {
	if r.agreedKV != nil && !gossipKey(key) {
		return fmt.Errorf("registry: key %q: %w", key, ErrKVAgreed)
	}
	return nil
}

// KVState returns every key and tombstone, for a push/pull.
func (r *Registry) KVState() []Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Entry, 0, r.t.kv.Len()+len(r.kvTombs))
	r.t.kv.Ascend(func(e *KVEntry) bool {
		out = append(out, kvEntryOf(e))
		return true
	})
	for _, t := range r.kvTombs {
		out = append(out, t)
	}
	return out
}

func kvEntryOf(e *KVEntry) Entry {
	return Entry{Node: e.writer, Kind: KindKV, Key: e.Key, Version: e.version, KV: &KVValue{Value: e.Value, Flags: e.Flags}}
}

// mergeKV applies a remote write if it wins over what this node has.
func (tx *txn) mergeKV(e Entry) bool {
	r := tx.r
	if e.Node == "" || e.Version == 0 || !e.Deleted && e.KV == nil {
		return false
	}
	if e.keyChanged || ValidKey(e.Key) != nil {
		// A key this node would refuse, such as one with invalid UTF-8
		// from an older node (its bytes already replaced on the way): taking
		// it would make a key that nobody wrote.
		return false
	}
	r.clock.observe(e.Version)
	if cur, ok := r.t.kv.Get(&KVEntry{Key: e.Key}); ok && !newer(e.Version, e.Node, cur.version, cur.writer) {
		return false
	}
	if t, ok := r.kvTombs[e.Key]; ok && !newer(e.Version, e.Node, t.Version, t.Node) {
		return false
	}
	if e.Deleted {
		e.at = r.clock.now()
	}
	// A write the disk refuses is not applied either: memory keeps agreeing
	// with the data dir, and the next push/pull (or broadcast) offers the
	// write again.
	if err := r.saveKV(e); err != nil {
		r.log.Warn("a KV write from the cluster not applied: persisting it failed; anti-entropy will offer it again", "key", e.Key, "writer", e.Node, "err", err)
		return false
	}
	tx.applyKV(e)
	return true
}

// applyKV records a KV write or delete that has won.
func (tx *txn) applyKV(e Entry) {
	r := tx.r
	tx.changed = true
	tx.tables |= tableKV
	if old, ok := r.t.kv.Get(&KVEntry{Key: e.Key}); ok {
		r.kvBytes -= int64(len(old.Key) + len(old.Value))
	}
	if e.Deleted {
		r.t.kv.Delete(&KVEntry{Key: e.Key})
		if e.at.IsZero() {
			e.at = r.clock.now()
		}
		e.KV = nil
		r.kvTombs[e.Key] = e
		return
	}
	delete(r.kvTombs, e.Key)
	ne := &KVEntry{Key: e.Key, Value: e.KV.Value, Flags: e.KV.Flags, CreateIndex: tx.index, ModifyIndex: tx.index, version: e.Version, writer: e.Node}
	if cur, ok := r.t.kv.Get(ne); ok {
		ne.CreateIndex = cur.CreateIndex
	}
	r.t.kv.ReplaceOrInsert(ne)
	r.kvBytes += int64(len(ne.Key) + len(ne.Value))
}

// collectKVTombstones drops KV tombstones older than KVTombstoneTTL; r.mu
// must be held.
func (r *Registry) collectKVTombstones() {
	cut := r.clock.now().Add(-KVTombstoneTTL)
	for k, t := range r.kvTombs {
		if t.at.Before(cut) {
			delete(r.kvTombs, k)
			if r.store != nil {
				r.store.removeKV(k)
			}
		}
	}
}

// saveKV makes a KV write or delete durable in the data dir (tombstones
// too, so a restart does not forget a delete) before it is applied; r.mu
// must be held. Without a data dir it is a no-op.
func (r *Registry) saveKV(e Entry) error {
	if r.store == nil {
		return nil
	}
	if e.Deleted {
		e.KV = &KVValue{Flags: uint64(e.at.Unix())} // when it was deleted, for collection after a restart
	}
	if err := r.store.saveKV(e); err != nil {
		return fmt.Errorf("registry: persisting KV key %q: %w", e.Key, err)
	}
	return nil
}

// loadKV puts the persisted KV store back; called by New inside its first
// transaction.
func (tx *txn) loadKV(entries []Entry) {
	for _, e := range entries {
		tx.r.clock.observe(e.Version)
		if e.Deleted {
			at := time.Unix(0, 0)
			if e.KV != nil {
				at = time.Unix(int64(e.KV.Flags), 0)
			}
			e.KV, e.at = nil, at
			tx.r.kvTombs[e.Key] = e
			continue
		}
		tx.applyKV(e)
	}
}

func (s *store) kvPath(key string) string { return filepath.Join(s.dir, "kv", fileName(key)) }

func (s *store) saveKV(e Entry) error { return writeJSON(s.kvPath(e.Key), e) }

func (s *store) removeKV(key string) error { return removeFile(s.kvPath(key)) }

// loadKV reads the persisted KV store. A file whose key is not the one it
// was written for (a key with invalid UTF-8 that an older version accepted,
// its bytes replaced by JSON) is skipped and reported, not loaded under a
// key nobody wrote.
func (s *store) loadKV() (out []Entry, skipped []string, err error) {
	dir := filepath.Join(s.dir, "kv")
	err = readDir(dir, func(path string, b []byte) error {
		var e Entry
		if err := json.Unmarshal(b, &e); err != nil {
			return err
		}
		if e.Kind != KindKV || e.Key == "" || e.Version == 0 || !e.Deleted && e.KV == nil {
			return errors.New("not a KV entry")
		}
		if e.keyChanged || ValidKey(e.Key) != nil || fileName(e.Key) != filepath.Base(path) {
			skipped = append(skipped, path)
			return nil
		}
		out = append(out, e)
		return nil
	})
	return out, skipped, err
}

// UnmarshalJSON notes whether the key was changed by the encoding: Go's
// encoder writes an invalid UTF-8 byte as the escape \ufffd (a real U+FFFD
// goes as itself), and the decoder cannot give the byte back.
func (e *Entry) UnmarshalJSON(b []byte) error {
	type plain Entry
	if err := json.Unmarshal(b, (*plain)(e)); err != nil {
		return err
	}
	e.keyChanged = false
	if strings.ContainsRune(e.Key, utf8.RuneError) {
		var raw struct {
			Key json.RawMessage `json:"id"`
		}
		if json.Unmarshal(b, &raw) == nil && bytes.Contains(bytes.ToLower(raw.Key), []byte(`\ufffd`)) {
			e.keyChanged = true
		}
	}
	return nil
}
