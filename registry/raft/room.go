package raft

import (
	"fmt"
	"os"
	"path/filepath"
)

// A server whose disk fills up cannot lead: hashicorp/raft steps a leader
// down when its log store refuses an append, and an election needs the
// stable store to take the new term, so a full disk leaves the group with
// no leader, reads and all, until an operator frees space (and a failed term
// write panics the process). So a write is refused, with a 500 that says
// why, while the disk still has room for what Raft itself needs: bbolt grows
// its file by up to its size (16 MiB chunks past 16 MiB), elections and the
// new leader's first entry need a few pages, and a margin covers the entry.
const (
	boltChunk  = 16 << 20 // bbolt's AllocSize
	roomMargin = 64 << 10
)

// roomFor checks that the data dir can take an entry of n bytes and
// still grow the log file once; without a data dir (-dev) there is nothing
// to check.
func (n *Node) roomFor(size int) error {
	if n.cfg.DataDir == "" {
		return nil
	}
	dir := filepath.Join(n.cfg.DataDir, "raft")
	fi, err := os.Stat(filepath.Join(dir, "raft.db"))
	if err != nil {
		return nil // the store reports its own errors
	}
	free, ok := freeBytes(dir)
	if !ok {
		return nil
	}
	need := uint64(min(fi.Size(), boltChunk)) + uint64(4*size) + roomMargin
	if free < need {
		return fmt.Errorf("raft: not enough space left on device for the data dir (%d KiB free, a write may need %d KiB): writes are refused until space is freed", free>>10, need>>10)
	}
	return nil
}
