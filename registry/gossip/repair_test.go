package gossip

import (
	"encoding/binary"
	"hash/fnv"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// hashEntry must hash the bytes earlier versions fed hash/fnv, or a cluster
// of old and new agents would find every digest different and exchange
// whole states every second.
func TestHashEntryMatchesFNV(t *testing.T) {
	for _, e := range []registry.Entry{
		{Node: "n1", Kind: registry.KindService, Key: "redis1", Version: 1 << 40},
		{Node: "", Kind: registry.KindNode, Version: 0},
		{Node: "node-ä", Kind: registry.KindKV, Key: "a/b", Version: ^uint64(0), Deleted: true},
	} {
		h := fnv.New64a()
		h.Write([]byte(e.Node))
		h.Write([]byte{0, byte(e.Kind)})
		h.Write([]byte(e.Key))
		var b [9]byte
		binary.BigEndian.PutUint64(b[:8], e.Version)
		if e.Deleted {
			b[8] = 1
		}
		h.Write(b[:])
		if got, want := hashEntry(&e), h.Sum64(); got != want {
			t.Errorf("hashEntry(%+v) = %x, hash/fnv %x", e, got, want)
		}
		f := fnv.New64a()
		f.Write([]byte(e.Key))
		if got, want := fnv64a(e.Key), f.Sum64(); got != want {
			t.Errorf("fnv64a(%q) = %x, hash/fnv %x", e.Key, got, want)
		}
	}
}
