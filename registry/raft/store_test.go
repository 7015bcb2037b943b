package raft

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/pier-dev/pier/deploy/eventually"
)

// soloServer starts a bootstrapped server of one on dir and waits until it
// leads.
func soloServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	s := startServer(t, cfg)
	if err := s.n.Bootstrap([]Server{{ID: s.n.ID(), Address: s.n.Addr(), Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "a leader", s.n.IsLeader)
	return s
}

func onDisk(dir string) (bolt, wal bool) {
	_, err := os.Stat(filepath.Join(dir, "raft", "raft.db"))
	bolt = err == nil
	_, err = os.Stat(filepath.Join(dir, "raft", "wal", raftwalMeta))
	return bolt, err == nil
}

// A new data dir gets the WAL; one that holds raft.db keeps bbolt, as
// Consul's servers do; a configured backend that contradicts the data dir
// is refused with an error that says what the dir holds.
func TestLogStoreBackend(t *testing.T) {
	walDir, boltDir := t.TempDir(), t.TempDir()
	for _, c := range []struct {
		dir, want string
		wal       bool
	}{{walDir, "", true}, {boltDir, LogStoreBoltDB, false}} {
		s := soloServer(t, Config{ID: "b", Bind: "127.0.0.1:0", DataDir: c.dir, LogStore: c.want})
		if r, err := s.n.KV(KVOp{Verb: KVSet, Key: "k", Value: []byte("v")}); err != nil || !r.OK {
			t.Fatalf("write: %+v %v", r, err)
		}
		s.stop()
		if bolt, wal := onDisk(c.dir); bolt == c.wal || wal != c.wal {
			t.Errorf("backend %q: raft.db %v, WAL %v; want the WAL: %v", c.want, bolt, wal, c.wal)
		}
		// Restarted with no setting, it keeps what it has, write and all.
		s = soloServer(t, Config{ID: "b", Bind: s.cfg.Bind, DataDir: c.dir})
		if want := map[bool]string{true: LogStoreWAL, false: LogStoreBoltDB}[c.wal]; s.n.store != want {
			t.Errorf("restart of a %s dir: %s", want, s.n.store)
		}
		eventually.True(t, 10*time.Second, "the write is back", func() bool { _, ok := s.n.State().KV("k"); return ok })
		s.stop()
		if bolt, wal := onDisk(c.dir); bolt == c.wal || wal != c.wal {
			t.Errorf("after the restart: raft.db %v, WAL %v", bolt, wal)
		}
	}
	for _, c := range []struct{ dir, backend, msg string }{
		{walDir, LogStoreBoltDB, "holds a WAL log"},
		{boltDir, LogStoreWAL, "holds a boltdb log (raft.db)"},
		{t.TempDir(), "bolt", `"bolt" is not a log store backend`},
	} {
		_, err := New(Config{ID: "b", Bind: "127.0.0.1:0", DataDir: c.dir, LogStore: c.backend})
		if err == nil || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "raft_logstore.backend") {
			t.Errorf("backend %q on %s: %v, want an error naming raft_logstore.backend with %q", c.backend, c.dir, err, c.msg)
		}
	}
	if _, err := New(Config{ID: "b", Bind: "127.0.0.1:0", DataDir: t.TempDir(), WALSegmentSize: 1000}); err == nil || !strings.Contains(err.Error(), "segment_size_mb") {
		t.Errorf("a 1000-byte segment: %v", err)
	}
}

// Every acknowledged write to a WAL server is there after a restart, across
// several small segments (rotations) and an operator's snapshot restore.
func TestWALRestartKeepsWrites(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{ID: "w", Bind: "127.0.0.1:0", DataDir: dir, WALSegmentSize: MinWALSegmentSize}
	s := soloServer(t, cfg)
	const n = 1000
	val := []byte(strings.Repeat("v", 2000)) // 2 MB in all: two rotations of 1 MiB segments at least
	for i := range n {
		if r, err := s.n.KV(KVOp{Verb: KVSet, Key: fmt.Sprintf("k%04d", i), Value: val}); err != nil || !r.OK {
			t.Fatalf("write %d: %+v %v", i, r, err)
		}
	}
	// A snapshot saved, a write after it, the snapshot restored (the write
	// is gone), and one more write: the log after a restore is the WAL's
	// too.
	var snap bytes.Buffer
	if _, err := s.n.SaveSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"undone", "redone"} {
		if r, err := s.n.KV(KVOp{Verb: KVSet, Key: k, Value: val}); err != nil || !r.OK {
			t.Fatalf("write %s: %+v %v", k, r, err)
		}
		if k == "undone" {
			if err := s.n.RestoreSnapshot(bytes.NewReader(snap.Bytes())); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.stop()
	segs, _ := filepath.Glob(filepath.Join(dir, "raft", "wal", "*.wal"))
	t.Logf("%d segment files after %d writes", len(segs), n)
	cfg.Bind = s.cfg.Bind
	s = soloServer(t, cfg)
	eventually.True(t, 10*time.Second, "the restarted server catches up", s.n.CaughtUp)
	st := s.n.State()
	for i := range n {
		if _, ok := st.KV(fmt.Sprintf("k%04d", i)); !ok {
			t.Fatalf("k%04d was acknowledged and is missing after a restart", i)
		}
	}
	if _, ok := st.KV("undone"); ok {
		t.Error("a write the restored snapshot undid is back after a restart")
	}
	if _, ok := st.KV("redone"); !ok {
		t.Error("the write after the restore is missing after a restart")
	}
}

// BenchmarkPut is one KV write through a server of one with a data dir on
// each backend: one at a time (the latency of a write, fsync included) and
// from 64 writers at once (group commit).
func BenchmarkPut(b *testing.B) {
	for _, backend := range []string{LogStoreBoltDB, LogStoreWAL} {
		for _, writers := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/writers=%d", backend, writers), func(b *testing.B) {
				n, err := New(Config{ID: "p", Bind: "127.0.0.1:0", DataDir: b.TempDir(), LogStore: backend, Tune: fast})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- n.Run(ctx) }()
				defer func() { cancel(); <-done }()
				if err := n.Bootstrap([]Server{{ID: "p", Address: n.Addr(), Voter: true}}); err != nil {
					b.Fatal(err)
				}
				eventually.True(b, 10*time.Second, "a leader", n.IsLeader)
				val := []byte(strings.Repeat("v", 100))
				var next atomic.Int64
				put := func() bool {
					key := fmt.Sprintf("k%03d", next.Add(1)%1000)
					r, err := n.KV(KVOp{Verb: KVSet, Key: key, Value: val})
					if err != nil || !r.OK {
						b.Errorf("write: %+v %v", r, err)
						return false
					}
					return true
				}
				b.ResetTimer()
				if writers == 1 {
					for i := 0; i < b.N && put(); i++ {
					}
					return
				}
				b.SetParallelism((writers + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() && put() {
					}
				})
			})
		}
	}
}

// A term that a late heartbeat sets after Raft shut down, while the stores
// close, is dropped: hashicorp/raft panics when that write fails, and CI saw
// the panic take a whole test binary down ("database not open"). Both
// backends: bbolt's stable store and the WAL's meta DB.
func TestStableGuardAfterClose(t *testing.T) {
	for _, backend := range []string{LogStoreBoltDB, LogStoreWAL} {
		t.Run(backend, func(t *testing.T) {
			st, err := openStores(t.TempDir(), backend, MinWALSegmentSize, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			g := &stableGuard{StableStore: st.stable}
			if err := g.SetUint64([]byte("CurrentTerm"), 2); err != nil {
				t.Fatal(err)
			}
			if v, err := g.GetUint64([]byte("CurrentTerm")); err != nil || v != 2 {
				t.Fatalf("before close: %d %v", v, err)
			}
			g.Close()
			if err := st.closer.Close(); err != nil {
				t.Fatal(err)
			}
			if err := g.SetUint64([]byte("CurrentTerm"), 3); err != nil {
				t.Fatalf("a term set after close failed (Raft would panic): %v", err)
			}
			if err := st.stable.SetUint64([]byte("CurrentTerm"), 3); err == nil {
				t.Fatal("the closed store took a write: this test no longer shows why the guard is there")
			}
			if _, err := g.GetUint64([]byte("CurrentTerm")); err == nil {
				t.Fatal("a read after close answered")
			}
		})
	}
}
