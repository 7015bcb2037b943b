package raft

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// applier feeds commands to an FSM as raft would, one index after another.
type applier struct {
	t   *testing.T
	f   *FSM
	idx uint64
}

func (a *applier) apply(c command) Result {
	a.t.Helper()
	b, err := encode(c)
	if err != nil {
		a.t.Fatal(err)
	}
	a.idx++
	return a.f.Apply(&hraft.Log{Index: a.idx, Type: hraft.LogCommand, Data: b}).(Result)
}

func (a *applier) kv(op KVOp) Result { return a.apply(command{Type: cmdKV, Ops: []KVOp{op}}) }

func newApplier(t *testing.T, now func() time.Time) *applier {
	return &applier{t: t, f: NewFSM(now)}
}

func TestKVSetCASDelete(t *testing.T) {
	a := newApplier(t, nil)
	if r := a.kv(KVOp{Verb: KVSet, Key: "a", Value: []byte("1"), Flags: 7}); !r.OK || r.Err != nil {
		t.Fatalf("set: %+v", r)
	}
	e, ok := a.f.State().KV("a")
	if !ok || string(e.Value) != "1" || e.Flags != 7 || e.CreateIndex != 1 || e.ModifyIndex != 1 {
		t.Fatalf("after set: %+v", e)
	}
	// A set that changes nothing keeps the ModifyIndex, as Consul.
	a.kv(KVOp{Verb: KVSet, Key: "a", Value: []byte("1"), Flags: 7})
	if e, _ := a.f.State().KV("a"); e.ModifyIndex != 1 || a.f.State().KVIndex() != 1 {
		t.Errorf("an unchanged set moved the index: %+v, table %d", e, a.f.State().KVIndex())
	}
	// cas 0: only if absent.
	if r := a.kv(KVOp{Verb: KVCAS, Key: "a", Value: []byte("x")}); r.OK {
		t.Error("cas 0 on an existing key succeeded")
	}
	if r := a.kv(KVOp{Verb: KVCAS, Key: "b", Value: []byte("x")}); !r.OK {
		t.Error("cas 0 on a new key failed")
	}
	if r := a.kv(KVOp{Verb: KVCAS, Key: "a", Value: []byte("2"), Index: 99}); r.OK {
		t.Error("cas with a stale index succeeded")
	}
	if r := a.kv(KVOp{Verb: KVCAS, Key: "a", Value: []byte("2"), Index: 1}); !r.OK {
		t.Error("cas with the current index failed")
	}
	e, _ = a.f.State().KV("a")
	if string(e.Value) != "2" || e.CreateIndex != 1 || e.ModifyIndex != a.idx {
		t.Errorf("after cas: %+v", e)
	}
	if r := a.kv(KVOp{Verb: KVCAS, Key: "nope", Index: 3}); r.OK {
		t.Error("cas with an index on a missing key succeeded")
	}
	if r := a.kv(KVOp{Verb: KVDeleteCAS, Key: "a", Index: 1}); r.OK {
		t.Error("delete-cas with a stale index succeeded")
	}
	if r := a.kv(KVOp{Verb: KVDeleteCAS, Key: "a", Index: e.ModifyIndex}); !r.OK {
		t.Error("delete-cas with the current index failed")
	}
	if _, ok := a.f.State().KV("a"); ok || a.f.State().KVIndex() != a.idx {
		t.Errorf("after delete-cas: present=%v, table index %d, want %d", ok, a.f.State().KVIndex(), a.idx)
	}
	for _, k := range []string{"t/1", "t/2", "t/x/3", "u"} {
		a.kv(KVOp{Verb: KVSet, Key: k})
	}
	a.kv(KVOp{Verb: KVDeleteTree, Key: "t/"})
	var keys []string
	for _, e := range a.f.State().KVList("") {
		keys = append(keys, e.Key)
	}
	if !reflect.DeepEqual(keys, []string{"b", "u"}) {
		t.Errorf("after delete-tree t/: %v", keys)
	}
	if r := a.kv(KVOp{Verb: "frob", Key: "x"}); r.Err == nil {
		t.Error("an unknown verb applied")
	}
}

func TestLocksAndSessions(t *testing.T) {
	now := time.Unix(1000, 0)
	a := newApplier(t, func() time.Time { return now })
	// An unknown session is an error (Consul's 500), not a failed acquire.
	if r := a.kv(KVOp{Verb: KVLock, Key: "lead", Session: "s1"}); r.Err == nil || !strings.Contains(r.Err.Error(), `"s1"`) {
		t.Fatalf("lock with an unknown session: %+v", r)
	}
	if r := a.apply(command{Type: cmdSessionCreate, Session: &Session{ID: "s1", Node: "n1", LockDelay: 15 * time.Second}}); r.Err != nil {
		t.Fatal(r.Err)
	}
	a.apply(command{Type: cmdSessionCreate, Session: &Session{ID: "s2", Node: "n2", Behavior: BehaviorDelete}})
	if s, _ := a.f.State().Session("s1"); s.Behavior != BehaviorRelease || s.CreateIndex == 0 {
		t.Errorf("session defaults: %+v", s)
	}
	if r := a.apply(command{Type: cmdSessionCreate, Session: &Session{ID: "s3", Behavior: "explode"}}); r.Err == nil {
		t.Error("a bad behavior was accepted")
	}

	if r := a.kv(KVOp{Verb: KVLock, Key: "lead", Value: []byte("n1"), Session: "s1"}); !r.OK {
		t.Fatal("first acquire failed")
	}
	if e, _ := a.f.State().KV("lead"); e.Session != "s1" || e.LockIndex != 1 {
		t.Fatalf("after acquire: %+v", e)
	}
	if r := a.kv(KVOp{Verb: KVLock, Key: "lead", Value: []byte("n2"), Session: "s2"}); r.OK {
		t.Fatal("a second session acquired a held lock")
	}
	// Re-acquiring by the holder updates the value, not the lock index.
	a.kv(KVOp{Verb: KVLock, Key: "lead", Value: []byte("n1b"), Session: "s1"})
	if e, _ := a.f.State().KV("lead"); e.LockIndex != 1 || string(e.Value) != "n1b" {
		t.Errorf("re-acquire: %+v", e)
	}
	// A plain set keeps the lock.
	a.kv(KVOp{Verb: KVSet, Key: "lead", Value: []byte("v")})
	if e, _ := a.f.State().KV("lead"); e.Session != "s1" {
		t.Errorf("a set dropped the lock: %+v", e)
	}
	if r := a.kv(KVOp{Verb: KVUnlock, Key: "lead", Session: "s2"}); r.OK {
		t.Error("a release by another session succeeded")
	}
	if r := a.kv(KVOp{Verb: KVUnlock, Key: "lead", Value: []byte("free"), Session: "s1"}); !r.OK {
		t.Error("release by the holder failed")
	}
	if r := a.kv(KVOp{Verb: KVLock, Key: "lead", Session: "s2"}); !r.OK {
		t.Error("acquire after release failed")
	}
	if e, _ := a.f.State().KV("lead"); e.LockIndex != 2 || e.Session != "s2" {
		t.Errorf("second holder: %+v", e)
	}
	a.kv(KVOp{Verb: KVLock, Key: "other", Session: "s1"})

	// s2 (delete) is invalidated: its key goes. s1 (release) is destroyed:
	// its key stays, unlocked, under lock delay.
	a.apply(command{Type: cmdSessionDestroy, ID: "s2"})
	if _, ok := a.f.State().KV("lead"); ok {
		t.Error("a delete session's key survived it")
	}
	a.apply(command{Type: cmdSessionDestroy, ID: "s1"})
	if e, ok := a.f.State().KV("other"); !ok || e.Session != "" || e.LockIndex != 1 {
		t.Errorf("a release session's key: %+v %v", e, ok)
	}
	if d := a.f.LockDelay("other"); !d.Equal(now.Add(15 * time.Second)) {
		t.Errorf("lock delay until %v, want %v", d, now.Add(15*time.Second))
	}
	now = now.Add(16 * time.Second)
	if d := a.f.LockDelay("other"); !d.IsZero() {
		t.Errorf("lock delay after it ran out: %v", d)
	}
	if len(a.f.State().Sessions()) != 0 || len(a.f.State().heldBy("s1")) != 0 {
		t.Errorf("left behind: %v %v", a.f.State().Sessions(), a.f.State().heldBy("s1"))
	}
}

func TestTxn(t *testing.T) {
	a := newApplier(t, nil)
	a.kv(KVOp{Verb: KVSet, Key: "a", Value: []byte("1")})
	before := a.f.State()
	r := a.apply(command{Type: cmdTxn, Ops: []KVOp{
		{Verb: KVSet, Key: "b", Value: []byte("2")},
		{Verb: KVCheckIndex, Key: "a", Index: 99},
		{Verb: KVGet, Key: "zz"},
	}})
	if len(r.Errors) != 2 || r.Errors[0].OpIndex != 1 || r.Errors[1].OpIndex != 2 || r.Entries != nil {
		t.Fatalf("failed txn: %+v", r)
	}
	if _, ok := a.f.State().KV("b"); ok || a.f.State().KVIndex() != before.KVIndex() {
		t.Error("a failed txn left a write behind")
	}
	r = a.apply(command{Type: cmdTxn, Ops: []KVOp{
		{Verb: KVCheckIndex, Key: "a", Index: 1},
		{Verb: KVSet, Key: "b", Value: []byte("2")},
		{Verb: KVCheckNotExists, Key: "c"},
		{Verb: KVGet, Key: "a"},
		{Verb: KVGetTree, Key: ""},
		{Verb: KVDelete, Key: "a"},
	}})
	if len(r.Errors) != 0 {
		t.Fatalf("txn: %+v", r.Errors)
	}
	// check-index a, set b (no value), get a (value), get-tree a, b.
	if len(r.Entries) != 5 || r.Entries[1].Key != "b" || r.Entries[1].Value != nil ||
		string(r.Entries[2].Value) != "1" || r.Entries[4].Key != "b" || string(r.Entries[4].Value) != "2" {
		t.Errorf("txn results: %+v", r.Entries)
	}
	if _, ok := a.f.State().KV("a"); ok {
		t.Error("txn delete did not apply")
	}
}

func TestSnapshotRestore(t *testing.T) {
	a := newApplier(t, nil)
	a.apply(command{Type: cmdSessionCreate, Session: &Session{ID: "s1", Node: "n1", TTL: "10s"}})
	a.kv(KVOp{Verb: KVSet, Key: "k", Value: []byte{0, 0xff}, Flags: 3})
	a.kv(KVOp{Verb: KVLock, Key: "l", Session: "s1"})
	snap, _ := a.f.Snapshot()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	f2 := NewFSM(nil)
	old := f2.State()
	if err := f2.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.Changed():
	default:
		t.Error("restore did not wake readers")
	}
	s1, s2 := a.f.State(), f2.State()
	if s1.Index() != s2.Index() || s1.KVIndex() != s2.KVIndex() || s1.SessionIndex() != s2.SessionIndex() ||
		!reflect.DeepEqual(s1.KVList(""), s2.KVList("")) || !reflect.DeepEqual(s1.Sessions(), s2.Sessions()) ||
		!reflect.DeepEqual(s2.heldBy("s1"), []string{"l"}) {
		t.Errorf("restored state differs:\n%+v\n%+v", s1.KVList(""), s2.KVList(""))
	}
	for _, bad := range []string{"", "{}\n{", `{"KVs":1}` + "\n" + `{"Key":"a"}` + "\n" + `{"Key":"b"}`} {
		if err := NewFSM(nil).Restore(io.NopCloser(strings.NewReader(bad))); err == nil {
			t.Errorf("restore of %q succeeded", bad)
		}
	}
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

// A delete-tree of a prefix outside registry.ReservedKVPrefix ("" included)
// spares the agent's own keys (the ACL store); one of a reserved prefix
// deletes them.
func TestDeleteTreeSparesReserved(t *testing.T) {
	a := newApplier(t, nil)
	for _, k := range []string{"_pier/acl/token/t", "_pier/acl/bootstrap", "_x", "app/a"} {
		a.kv(KVOp{Verb: KVSet, Key: k})
	}
	keys := func() []string {
		var out []string
		for _, e := range a.f.State().KVList("") {
			out = append(out, e.Key)
		}
		return out
	}
	a.kv(KVOp{Verb: KVDeleteTree, Key: ""})
	if got := keys(); !reflect.DeepEqual(got, []string{"_pier/acl/bootstrap", "_pier/acl/token/t"}) {
		t.Fatalf("after delete-tree \"\": %v", got)
	}
	a.apply(command{Type: cmdTxn, Ops: []KVOp{{Verb: KVDeleteTree, Key: "_"}}})
	if got := keys(); len(got) != 2 {
		t.Fatalf("after a txn delete-tree _: %v", got)
	}
	a.kv(KVOp{Verb: KVDeleteTree, Key: "_pier/acl/token/"})
	if got := keys(); !reflect.DeepEqual(got, []string{"_pier/acl/bootstrap"}) {
		t.Fatalf("after delete-tree of a reserved prefix: %v", got)
	}
}

// TestSessionBoundKeys: keys listed under SessionBoundKey go with the
// session whatever its behaviour, the list with them; a list cannot be
// written for a session that does not exist, and a transaction that tries
// is rolled back whole.
func TestSessionBoundKeys(t *testing.T) {
	a := newApplier(t, nil)
	bound := SessionBoundKey("s1", "q1")
	r := a.apply(command{Type: cmdTxn, Ops: []KVOp{{Verb: KVSet, Key: "_pier/q/1", Value: []byte("x")},
		{Verb: KVSet, Key: bound, Value: []byte("_pier/q/1")}}})
	if len(r.Errors) != 1 || r.Errors[0].OpIndex != 1 || !strings.Contains(r.Errors[0].What, `invalid session "s1"`) {
		t.Fatalf("a list for an unknown session: %+v", r)
	}
	if _, ok := a.f.State().KV("_pier/q/1"); ok {
		t.Fatal("the refused transaction left its first write")
	}
	for _, s := range []*Session{{ID: "s1"}, {ID: "s2", Behavior: BehaviorRelease}} {
		if r := a.apply(command{Type: cmdSessionCreate, Session: s}); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	r = a.apply(command{Type: cmdTxn, Ops: []KVOp{{Verb: KVSet, Key: "_pier/q/1", Value: []byte("x")}, {Verb: KVSet, Key: "_pier/n/1", Value: []byte("1")},
		{Verb: KVSet, Key: bound, Value: []byte("_pier/q/1\n_pier/n/1")},
		{Verb: KVSet, Key: SessionBoundKey("s2", "q2"), Value: []byte("_pier/q/2")}, {Verb: KVSet, Key: "_pier/q/2", Value: []byte("y")}}})
	if len(r.Errors) != 0 {
		t.Fatalf("bound writes: %+v", r.Errors)
	}
	a.apply(command{Type: cmdSessionDestroy, ID: "s1"})
	for _, k := range []string{"_pier/q/1", "_pier/n/1", bound} {
		if _, ok := a.f.State().KV(k); ok {
			t.Errorf("%s outlived session s1", k)
		}
	}
	for _, k := range []string{"_pier/q/2", SessionBoundKey("s2", "q2")} {
		if _, ok := a.f.State().KV(k); !ok {
			t.Errorf("%s of session s2 went with s1", k)
		}
	}
}
