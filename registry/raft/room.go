package raft

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// A server whose disk fills up cannot lead: hashicorp/raft steps a leader
// down when its log store refuses an append, and an election needs the
// stable store to take the new term, so a full disk leaves the group with
// no leader, reads and all, until an operator frees space (and a failed term
// write panics the process). So a write is refused, with a 500 that says
// why, while the disk still has room for what Raft itself needs:
//   - bbolt (raft.db) grows its file by up to its size (16 MiB chunks past
//     16 MiB) on an append or a term write;
//   - the WAL appends into a preallocated segment, so an append never finds
//     the disk full until the segment fills and the next one is created,
//     whole; its meta DB (term, vote, the segments' list) is a small bbolt
//     file that grows as raft.db does.
//
// So the WAL refuses writes once less than a whole segment is free, even
// when the current one still has room: which segment a write lands in is
// not known before it is appended. Elections and the new leader's first
// entry need a few pages, and a margin covers the entry.
const (
	boltChunk  = 16 << 20 // bbolt's AllocSize
	roomMargin = 64 << 10
)

// roomRecheck is how long a measure that found plenty of room stands in
// for the next ones: two system calls per write were 7% of a leader's CPU
// under load (deploy/bench/README.md). Plenty is room for two of bbolt's
// chunks, the margin and every entry admitted since, so that the file
// may grow once within the window and still leave what roomFor asks for;
// with less than that, every write measures again. (For the WAL, a
// "chunk" is a segment and a chunk of its meta DB.)
const roomRecheck = 100 * time.Millisecond

// roomCache is the last measure of the data dir's free space.
type roomCache struct {
	mu       sync.Mutex
	at       time.Time // when free was measured; zero: measure again
	free     uint64
	admitted uint64 // 4x the bytes of the entries admitted since
}

// roomFor checks that the data dir can take an entry of n bytes and
// still grow the log file once; without a data dir (-dev) there is nothing
// to check.
func (n *Node) roomFor(size int) error {
	if n.cfg.DataDir == "" {
		return nil
	}
	c := &n.room
	c.mu.Lock()
	defer c.mu.Unlock()
	entry := uint64(4 * size)
	if !c.at.IsZero() && time.Since(c.at) < roomRecheck && c.free >= 2*n.maxGrowth()+roomMargin+c.admitted+entry {
		c.admitted += entry
		return nil
	}
	c.at = time.Time{}
	dir := filepath.Join(n.cfg.DataDir, "raft")
	grow, ok := n.nextGrowth(dir)
	if !ok {
		return nil // the store reports its own errors
	}
	free, ok := freeBytes(dir)
	if !ok {
		return nil
	}
	need := grow + entry + roomMargin
	if free < need {
		return fmt.Errorf("raft: not enough space left on device for the data dir (%d KiB free, a write may need %d KiB): writes are refused until space is freed", free>>10, need>>10)
	}
	c.at, c.free, c.admitted = time.Now(), free, entry
	return nil
}

// nextGrowth answers how much the store's files may grow by at the next
// append or term write (see the top of this file).
func (n *Node) nextGrowth(dir string) (uint64, bool) {
	bolt := filepath.Join(dir, "raft.db")
	if n.store == LogStoreWAL {
		bolt = filepath.Join(dir, "wal", raftwalMeta)
	}
	fi, err := os.Stat(bolt)
	if err != nil {
		return 0, false
	}
	grow := uint64(min(fi.Size(), boltChunk))
	if n.store == LogStoreWAL {
		grow += uint64(n.cfg.WALSegmentSize)
	}
	return grow, true
}

// maxGrowth bounds nextGrowth without a measure.
func (n *Node) maxGrowth() uint64 {
	if n.store == LogStoreWAL {
		return boltChunk + uint64(n.cfg.WALSegmentSize)
	}
	return boltChunk
}
