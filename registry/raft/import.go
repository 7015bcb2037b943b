package raft

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/pier-dev/pier/registry"
)

// importedMarker records in the agreed state that the gossip KV store was
// imported, so that it happens once per cluster and a key deleted later is
// not brought back by the next leader. Users cannot write under
// registry.ReservedKVPrefix.
const importedMarker = registry.ReservedKVPrefix + "imported/gossip-kv"

// ImportGossipKV copies the KV store of the gossip era (before pier had
// servers) into the Raft state, once per cluster: each key is created only
// if it does not exist (a cas at index 0), so a key already written through
// Raft wins, and a repeat after a crash halfway changes nothing. It answers
// how many keys it created; on a server that does not lead, ErrNotLeader.
func (n *Node) ImportGossipKV(entries []*registry.KVEntry) (int, error) {
	if !n.IsLeader() {
		return 0, ErrNotLeader
	}
	if _, done := n.State().KV(importedMarker); done {
		return 0, nil
	}
	created := 0
	for _, e := range entries {
		res, err := n.KV(KVOp{Verb: KVCAS, Key: e.Key, Value: e.Value, Flags: e.Flags, Index: 0})
		if err != nil {
			return created, fmt.Errorf("raft: importing the gossip KV, key %q: %w", e.Key, err)
		}
		if res.OK {
			created++
		}
	}
	if _, err := n.KV(KVOp{Verb: KVSet, Key: importedMarker, Value: []byte(time.Now().UTC().Format(time.RFC3339))}); err != nil {
		return created, fmt.Errorf("raft: marking the gossip KV imported: %w", err)
	}
	return created, nil
}

// RunImportGossipKV imports entries (ImportGossipKV) once this server leads
// a group that has not imported yet, retrying while it is not the leader
// or the group is unsettled, until it or another leader has done it or ctx
// ends.
func (n *Node) RunImportGossipKV(ctx context.Context, entries []*registry.KVEntry) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if _, done := n.State().KV(importedMarker); done {
			return nil
		}
		created, err := n.ImportGossipKV(entries)
		switch {
		case err == nil:
			if created > 0 {
				n.log.Info("raft: imported the gossip KV store", "keys", created)
			}
			return nil
		case !errors.Is(err, ErrNotLeader):
			n.log.Warn("raft: importing the gossip KV store; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
