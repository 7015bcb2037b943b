package registry

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// breakKVDir makes every write under dir/kv fail, as a full disk would, by
// putting a file where the directory was; the returned func undoes it.
func breakKVDir(t *testing.T, dir string) (restore func()) {
	t.Helper()
	return breakDir(t, filepath.Join(dir, "kv"))
}

// breakDir makes every write and removal of a file under kv fail.
func breakDir(t *testing.T, kv string) (restore func()) {
	t.Helper()
	if err := os.Rename(kv, kv+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kv, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.Remove(kv); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(kv+".away", kv); err != nil {
			t.Fatal(err)
		}
	}
}

func newPersisted(t *testing.T, dir string) (*Registry, *[]Entry) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address, cfg.DataDir = "n1", "127.0.0.1", dir
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	sent := &[]Entry{}
	r.SetBroadcaster(func(es []Entry) {
		mu.Lock()
		*sent = append(*sent, es...)
		mu.Unlock()
	})
	return r, sent
}

func kvValue(r *Registry, key string) string {
	e, ok := r.Snapshot().KV(key)
	if !ok {
		return "<none>"
	}
	return string(e.Value)
}

// TestKVWriteNotPersisted: a local write or delete that the data dir refuses
// is an error, and is neither applied, nor broadcast, nor on disk after a
// restart; a remote one is not applied (nor passed on) until a later offer
// of it can be persisted.
func TestKVWriteNotPersisted(t *testing.T) {
	dir := t.TempDir()
	r, sent := newPersisted(t, dir)
	if ok, err := r.KVPut("kept", []byte("v1"), 0, nil); !ok || err != nil {
		t.Fatalf("put: %v %v", ok, err)
	}
	*sent = nil
	idx := r.Snapshot().KVIndex()

	restore := breakKVDir(t, dir)
	var fe *FieldError
	if ok, err := r.KVPut("refused", []byte("x"), 0, nil); ok || err == nil || errors.As(err, &fe) || !strings.Contains(err.Error(), `"refused"`) {
		t.Errorf("put on a failing disk: %v %v, want an error naming the key", ok, err)
	}
	if ok, err := r.KVPut("kept", []byte("v2"), 0, nil); ok || err == nil {
		t.Errorf("overwrite on a failing disk: %v %v", ok, err)
	}
	if ok, err := r.KVDelete("kept", false, nil); ok || err == nil {
		t.Errorf("delete on a failing disk: %v %v", ok, err)
	}
	if ok, err := r.KVDelete("", true, nil); ok || err == nil || !strings.Contains(err.Error(), "0 of the 1 keys") {
		t.Errorf("recursive delete on a failing disk: %v %v", ok, err)
	}
	if v := kvValue(r, "kept"); v != "v1" {
		t.Errorf("kept after refused writes: %q, want v1", v)
	}
	if v := kvValue(r, "refused"); v != "<none>" {
		t.Errorf("refused write visible: %q", v)
	}
	if len(*sent) != 0 || r.Snapshot().KVIndex() != idx {
		t.Errorf("refused writes broadcast %d entries, moved the KV index %d -> %d", len(*sent), idx, r.Snapshot().KVIndex())
	}

	remote := Entry{Node: "n0", Kind: KindKV, Key: "remote", Version: r.clock.current() + 10, KV: &KVValue{Value: []byte("r")}}
	if fresh := r.Merge([]Entry{remote}); len(fresh) != 0 || kvValue(r, "remote") != "<none>" {
		t.Errorf("a remote write the disk refused: fresh %d, value %q", len(fresh), kvValue(r, "remote"))
	}
	restore()
	if fresh := r.Merge([]Entry{remote}); len(fresh) != 1 || kvValue(r, "remote") != "r" {
		t.Errorf("the same write offered again: fresh %d, value %q", len(fresh), kvValue(r, "remote"))
	}

	r2, _ := newPersisted(t, dir)
	for k, want := range map[string]string{"kept": "v1", "refused": "<none>", "remote": "r"} {
		if v := kvValue(r2, k); v != want {
			t.Errorf("after a restart %s = %q, want %q", k, v, want)
		}
	}
}

// TestKVKeyUTF8: keys must be UTF-8, locally and from the cluster; a key
// that was invalid where it was encoded (JSON made its byte U+FFFD) is
// dropped, a real U+FFFD is kept.
func TestKVKeyUTF8(t *testing.T) {
	dir := t.TempDir()
	r, _ := newPersisted(t, dir)
	var fe *FieldError
	if _, err := r.KVPut("u/bad\xffkey", []byte("x"), 0, nil); !errors.As(err, &fe) || fe.Field != "key" || !strings.Contains(err.Error(), `"u/bad\xffkey" is not valid UTF-8`) {
		t.Errorf("put of an invalid key: %v", err)
	}
	v := r.clock.current() + 10
	viaJSON := func(key string) Entry {
		b, err := json.Marshal(Entry{Node: "n0", Kind: KindKV, Key: key, Version: v, KV: &KVValue{Value: []byte("x")}})
		if err != nil {
			t.Fatal(err)
		}
		var e Entry
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	fresh := r.Merge([]Entry{
		{Node: "n0", Kind: KindKV, Key: "u/raw\xffkey", Version: v, KV: &KVValue{Value: []byte("x")}},
		viaJSON("u/json\xffkey"),
		viaJSON("u/real\ufffdkey"),
	})
	if len(fresh) != 1 || fresh[0].Key != "u/real\ufffdkey" {
		t.Errorf("merged: %+v", fresh)
	}
	var keys []string
	for _, e := range r.Snapshot().KVList("u/") {
		keys = append(keys, e.Key)
	}
	if len(keys) != 1 || keys[0] != "u/real\ufffdkey" {
		t.Errorf("keys after the merge: %q", keys)
	}

	// A file an older version wrote for an invalid key: skipped at start,
	// not loaded under the changed key.
	b, _ := json.Marshal(Entry{Node: "n1", Kind: KindKV, Key: "u/old\xffkey", Version: v + 1, KV: &KVValue{Value: []byte("old")}})
	if err := os.WriteFile(filepath.Join(dir, "kv", fileName("u/old\xffkey")), b, 0o600); err != nil {
		t.Fatal(err)
	}
	r2, _ := newPersisted(t, dir)
	keys = nil
	for _, e := range r2.Snapshot().KVList("u/") {
		keys = append(keys, e.Key)
	}
	if len(keys) != 1 || keys[0] != "u/real\ufffdkey" {
		t.Errorf("keys after a restart: %q", keys)
	}
}

// TestDeregisterServiceNotPersisted: a deregistration whose files cannot be
// removed is an error, and the catalog keeps what the data dir keeps.
func TestDeregisterServiceNotPersisted(t *testing.T) {
	dir := t.TempDir()
	r, _ := newPersisted(t, dir)
	if err := r.RegisterService(Service{ID: "s1", Name: "web"}, nil, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterCheck(Check{CheckID: "c1", Name: "c1", ServiceID: "s1", Status: StatusPassing, Definition: CheckDefinition{TTL: Duration(time.Minute)}}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	restore := breakDir(t, filepath.Join(dir, "checks"))
	if err := r.DeregisterService("s1"); err == nil {
		t.Error("deregistration with undeletable files: no error")
	}
	present := func(r *Registry) (svc, chk bool) {
		_, svc = r.LocalSource("s1")
		for _, c := range r.LocalChecks() {
			chk = chk || c.CheckID == "c1"
		}
		return svc, chk
	}
	if svc, chk := present(r); !svc || !chk {
		t.Errorf("after a failed deregistration: service %v, check %v; want both", svc, chk)
	}
	restore()
	r2, _ := newPersisted(t, dir)
	if svc, chk := present(r2); !svc || !chk {
		t.Errorf("after a restart: service %v, check %v; want both", svc, chk)
	}
	if err := r2.DeregisterService("s1"); err != nil {
		t.Fatal(err)
	}
	r3, _ := newPersisted(t, dir)
	if svc, chk := present(r3); svc || chk {
		t.Errorf("after deregistration and a restart: service %v, check %v; want neither", svc, chk)
	}
}

// TestSupersededCheckFile: a standalone check taken over by its service's
// registration stays the service's after a restart, even when its own file
// could not be removed.
func TestSupersededCheckFile(t *testing.T) {
	dir := t.TempDir()
	r, _ := newPersisted(t, dir)
	if err := r.RegisterService(Service{ID: "s1", Name: "web"}, nil, SourceAPI); err != nil {
		t.Fatal(err)
	}
	c := Check{CheckID: "c2", Name: "c2", ServiceID: "s1", Status: StatusPassing, Definition: CheckDefinition{TTL: Duration(time.Minute)}}
	if err := r.RegisterCheck(c, SourceAPI); err != nil {
		t.Fatal(err)
	}
	checkFile := filepath.Join(dir, "checks", fileName("c2"))
	// Make the removal of c2's file fail, as an I/O error would: a
	// directory in its place.
	if err := os.Rename(checkFile, checkFile+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(checkFile, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterService(Service{ID: "s1", Name: "web"}, []Check{c}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(checkFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(checkFile+".away", checkFile); err != nil {
		t.Fatal(err)
	}
	r2, _ := newPersisted(t, dir)
	if err := r2.DeregisterCheck("c2"); !errors.Is(err, ErrProtected) {
		t.Errorf("after a restart, c2 is not the service's: DeregisterCheck = %v", err)
	}
	if _, err := os.Stat(checkFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the superseded check file is still there: %v", err)
	}
}
