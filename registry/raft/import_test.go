package raft

import (
	"context"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

// The gossip era's KV reaches the Raft state once: keys already written
// through Raft keep their value, and a key deleted after the import is not
// brought back by a second run (a new leader).
func TestImportGossipKV(t *testing.T) {
	s := singleServer(t)
	if _, err := s.n.KV(KVOp{Verb: KVSet, Key: "app/mode", Value: []byte("raft")}); err != nil {
		t.Fatal(err)
	}
	old := []*registry.KVEntry{
		{Key: "app/mode", Value: []byte("gossip")},
		{Key: "app/color", Value: []byte("blue"), Flags: 7},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.n.RunImportGossipKV(ctx, old); err != nil {
		t.Fatal(err)
	}
	st := s.n.State()
	if e, _ := st.KV("app/mode"); e == nil || string(e.Value) != "raft" {
		t.Errorf("app/mode = %v, want the Raft value kept", e)
	}
	if e, _ := st.KV("app/color"); e == nil || string(e.Value) != "blue" || e.Flags != 7 {
		t.Errorf("app/color = %v, want imported with its flags", e)
	}
	if _, err := s.n.KV(KVOp{Verb: KVDelete, Key: "app/color"}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.n.ImportGossipKV(old); err != nil || n != 0 {
		t.Errorf("second import: %d keys, %v; want none (once per cluster)", n, err)
	}
	if _, ok := s.n.State().KV("app/color"); ok {
		t.Error("a key deleted after the import came back")
	}
}
