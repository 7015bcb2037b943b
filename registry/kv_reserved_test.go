package registry

import "testing"

// A recursive delete spares the reserved namespace unless it names it.
func TestKVDeleteSparesReserved(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address = "n1", "127.0.0.1"
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"_a", "_pier/acl/token/x", "_pier/acl/policy/y", "app/x"} {
		r.KVPut(k, []byte("1"), 0, nil)
	}
	for _, prefix := range []string{"", "_", "_pi"} {
		r.KVDelete(prefix, true, nil)
		if got := len(r.Snapshot().KVList(ReservedKVPrefix)); got != 2 {
			t.Fatalf("after deleting %q recursively: %d reserved keys, want 2", prefix, got)
		}
	}
	if got := len(r.Snapshot().KVList("")); got != 2 {
		t.Errorf("other keys left: %d, want only the 2 reserved", got)
	}
	r.KVDelete("_pier/acl/token/", true, nil)
	if got := r.Snapshot().KVList(ReservedKVPrefix); len(got) != 1 || got[0].Key != "_pier/acl/policy/y" {
		t.Errorf("a recursive delete inside the namespace: left %v", got)
	}
}
