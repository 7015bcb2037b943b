package registry

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestKVLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address, cfg.KVMaxBytes = "n1", "127.0.0.1", 100
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var fe *FieldError
	if _, err := r.KVPut(strings.Repeat("k", MaxKVKey+1), nil, 0, nil); !errors.As(err, &fe) || fe.Field != "key" {
		t.Fatalf("a key over %d bytes: %v", MaxKVKey, err)
	}
	if _, err := r.KVPut("a", make([]byte, MaxKVValue+1), 0, nil); !errors.As(err, &fe) || fe.Field != "value" {
		t.Fatalf("a value over 512 KiB: %v", err)
	}
	if ok, err := r.KVPut("a", make([]byte, 60), 0, nil); !ok || err != nil {
		t.Fatalf("within the store limit: %v %v", ok, err)
	}
	if _, err := r.KVPut("b", make([]byte, 60), 0, nil); !errors.Is(err, ErrKVFull) {
		t.Fatalf("past the store limit: %v", err)
	}
	// Replacing a value counts only the difference; deleting frees it.
	if ok, err := r.KVPut("a", make([]byte, 90), 0, nil); !ok || err != nil {
		t.Fatalf("replacing within the limit: %v %v", ok, err)
	}
	r.KVDelete("a", false, nil)
	if ok, err := r.KVPut("b", make([]byte, 60), 0, nil); !ok || err != nil {
		t.Fatalf("after a delete: %v %v", ok, err)
	}
	if _, ok := r.Snapshot().KV("a"); ok {
		t.Fatal("deleted key still there")
	}
}

// TestKVLastWriterWins: a remote write wins over a local one only if it is
// newer, ties broken by node name, and a tombstone keeps an older write out.
func TestKVLastWriterWins(t *testing.T) {
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address = "n1", "127.0.0.1"
	r, _ := New(cfg)
	r.KVPut("k", []byte("local"), 0, nil)
	cur, _ := r.Snapshot().KV("k")
	v := cur.version
	val := func() string {
		e, ok := r.Snapshot().KV("k")
		if !ok {
			return "<none>"
		}
		return string(e.Value)
	}
	r.Merge([]Entry{{Node: "n0", Kind: KindKV, Key: "k", Version: v, KV: &KVValue{Value: []byte("n0-same")}}})
	if val() != "local" {
		t.Fatalf("a tie went to the lower node name: %q", val())
	}
	r.Merge([]Entry{{Node: "n2", Kind: KindKV, Key: "k", Version: v, KV: &KVValue{Value: []byte("n2-same")}}})
	if val() != "n2-same" {
		t.Fatalf("a tie did not go to the higher node name: %q", val())
	}
	r.Merge([]Entry{{Node: "n0", Kind: KindKV, Key: "k", Version: v + 10, Deleted: true}})
	if val() != "<none>" {
		t.Fatalf("a newer tombstone lost: %q", val())
	}
	r.Merge([]Entry{{Node: "n3", Kind: KindKV, Key: "k", Version: v + 5, KV: &KVValue{Value: []byte("stale")}}})
	if val() != "<none>" {
		t.Fatalf("an older write came back over a tombstone: %q", val())
	}
	if ok, _ := r.KVPut("k", []byte("after"), 0, nil); !ok || val() != "after" {
		t.Fatalf("a local write after the tombstone: %q", val())
	}
	if e, _ := r.Snapshot().KV("k"); e.version <= v+10 {
		t.Fatal("the local clock did not move past the versions it saw")
	}
}

// BenchmarkKVPut measures local writes (in memory) per second.
// Run: go test -run XXX -bench KV ./registry/
func BenchmarkKVPut(b *testing.B) {
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address = "n1", "127.0.0.1"
	r, _ := New(cfg)
	val := []byte("a feature toggle value of some length")
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r.KVPut("config/app/key-"+strconv.Itoa(i%10000), val, 0, nil)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}

// BenchmarkKVMemory reports the heap that 100,000 keys take.
func BenchmarkKVMemory(b *testing.B) {
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		cfg := DefaultConfig()
		cfg.NodeName, cfg.Address = "n1", "127.0.0.1"
		r, _ := New(cfg)
		for i := range 100000 {
			r.KVPut("config/service-"+strconv.Itoa(i%500)+"/key-"+strconv.Itoa(i), []byte("value-"+strconv.Itoa(i)), 0, nil)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/(1<<20), "MB-heap-100k-keys")
		runtime.KeepAlive(r)
	}
}
