package raft

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// The log store backends, as Consul's raft_logstore.backend names them.
const (
	// LogStoreBoltDB keeps the log and the stable store in one bbolt file,
	// raft/raft.db: every append is a bbolt transaction, two fdatasyncs
	// (the pages, then the meta page).
	LogStoreBoltDB = "boltdb"
	// LogStoreWAL appends the log to preallocated segment files under
	// raft/wal (one fsync per append) and keeps the stable store (term,
	// vote) and the segments' list in raft/wal/wal-meta.db, written only on
	// elections and segment rotations.
	LogStoreWAL = "wal"
)

// DefaultWALSegmentSize is Consul's raft_logstore.wal.segment_size_mb (64).
const DefaultWALSegmentSize = 64 << 20

// Bounds of Config.WALSegmentSize, as Consul checks segment_size_mb.
const (
	MinWALSegmentSize = 1 << 20
	MaxWALSegmentSize = 1 << 30
)

// ParseLogStore checks a configured backend: "" (what the data dir holds,
// the WAL for a new one), LogStoreBoltDB or LogStoreWAL.
func ParseLogStore(s string) error {
	switch s {
	case "", LogStoreBoltDB, LogStoreWAL:
		return nil
	}
	return fmt.Errorf("%q is not a log store backend: want %q or %q", s, LogStoreBoltDB, LogStoreWAL)
}

// logStores is what a data dir's Raft state is kept in.
type logStores struct {
	backend string
	logs    hraft.LogStore
	stable  hraft.StableStore
	closer  io.Closer
}

// storeBackend decides which backend dir's Raft state is in: the one the
// data dir already holds, or want (the WAL when unset) for a new one. A
// data dir is never converted: its log would have to be copied, and a
// configured backend that contradicts what is on disk is refused rather
// than ignored, so that an operator who asked for the WAL is not left
// believing they have it.
func storeBackend(dir, want string) (string, error) {
	if err := ParseLogStore(want); err != nil {
		return "", fmt.Errorf("raft: raft_logstore.backend: %w", err)
	}
	bolt := exists(filepath.Join(dir, "raft.db"))
	wal := exists(filepath.Join(dir, "wal"))
	switch {
	case bolt && wal:
		return "", fmt.Errorf("raft: %s holds both raft.db (boltdb) and wal/: one of them is not this server's log; move the wrong one away", dir)
	case bolt && want == LogStoreWAL:
		return "", fmt.Errorf("raft: raft_logstore.backend is %q but %s holds a boltdb log (raft.db): an existing data dir keeps its backend; set backend %q or remove the setting, or start this server with an empty data dir (it catches up from the others)", want, dir, LogStoreBoltDB)
	case wal && want == LogStoreBoltDB:
		return "", fmt.Errorf("raft: raft_logstore.backend is %q but %s holds a WAL log (wal/): an existing data dir keeps its backend; set backend %q or remove the setting, or start this server with an empty data dir (it catches up from the others)", want, dir, LogStoreWAL)
	case bolt:
		return LogStoreBoltDB, nil
	case wal, want == "":
		return LogStoreWAL, nil
	}
	return want, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil || !errors.Is(err, os.ErrNotExist)
}

// openStores opens backend's stores in dir (the data dir's raft/).
func openStores(dir, backend string, segmentSize int, hlog hclog.Logger) (logStores, error) {
	if backend == LogStoreBoltDB {
		path := filepath.Join(dir, "raft.db")
		bolt, err := raftboltdb.New(raftboltdb.Options{Path: path})
		if err != nil {
			return logStores{}, fmt.Errorf("raft: opening %s: %w", path, err)
		}
		return logStores{backend: backend, logs: bolt, stable: bolt, closer: bolt}, nil
	}
	path := filepath.Join(dir, "wal")
	if err := os.MkdirAll(path, 0o700); err != nil {
		return logStores{}, fmt.Errorf("raft: data dir: %w", err)
	}
	// raft-wal's Close leaves its meta DB open (and bbolt's lock on it
	// held, so a server restarted in the same process would wait on it
	// forever): the meta DB is ours to close, after the WAL.
	meta := &metadb.BoltMetaDB{}
	w, err := raftwal.Open(path, raftwal.WithSegmentSize(segmentSize), raftwal.WithMetaStore(meta), raftwal.WithLogger(hlog.Named("wal")))
	if err != nil {
		meta.Close()
		return logStores{}, fmt.Errorf("raft: opening the WAL in %s: %w", path, err)
	}
	return logStores{backend: backend, logs: w, stable: w, closer: closeAll{w, meta}}, nil
}

// closeAll closes each in turn and answers the first error.
type closeAll []io.Closer

func (cs closeAll) Close() error {
	var first error
	for _, c := range cs {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// raftwalMeta is raft-wal's meta DB file in its directory.
const raftwalMeta = metadb.FileName

// stableGuard stands between Raft and its stable store so that a term set
// in the instant between Raft's shutdown and the store's close is dropped
// instead of crashing the process. hashicorp/raft answers heartbeats on the
// transport's goroutine, which can pass its shutdown check just before
// Shutdown returns and then panics when saving the term fails on a closed
// store (seen in CI: "failed to save current term: database not open").
// Dropping that write is safe: a Raft that has shut down acts on nothing
// (votes go through its main loop, which has stopped), and a restart reads
// the term the store last saved, as after a crash at the same moment.
type stableGuard struct {
	mu     sync.RWMutex
	closed bool
	hraft.StableStore
}

var errStableClosed = errors.New("raft: stable store closed")

func (g *stableGuard) Set(k, v []byte) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return nil
	}
	return g.StableStore.Set(k, v)
}

func (g *stableGuard) SetUint64(k []byte, v uint64) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return nil
	}
	return g.StableStore.SetUint64(k, v)
}

func (g *stableGuard) Get(k []byte) ([]byte, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return nil, errStableClosed
	}
	return g.StableStore.Get(k)
}

func (g *stableGuard) GetUint64(k []byte) (uint64, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return 0, errStableClosed
	}
	return g.StableStore.GetUint64(k)
}

// Close waits for the calls in progress, then lets no more through; the
// store itself is closed by its own closer after this one.
func (g *stableGuard) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	return nil
}
