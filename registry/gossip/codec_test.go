package gossip

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"io"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// A push/pull state is a deflate stream whatever its size: a small one in
// stored blocks, a large one compressed. An agent that always inflates (an
// older pier) reads both, and reads back what was sent.
func TestStateIsDeflateStreamAtAnySize(t *testing.T) {
	for _, n := range []int{1, 20, 2000} {
		t.Run(fmt.Sprint(n, " entries"), func(t *testing.T) {
			st := state{Nodes: []registry.NodeState{{Node: "n1", Complete: 7}}, EventClock: 3}
			for i := range n {
				st.Nodes[0].Entries = append(st.Nodes[0].Entries, registry.Entry{Node: "n1", Kind: registry.KindService, Key: fmt.Sprintf("web-%d", i), Version: uint64(i + 1)})
			}
			plain, err := json.Marshal(st)
			if err != nil {
				t.Fatal(err)
			}
			buf, err := encodeState(st)
			if err != nil {
				t.Fatal(err)
			}
			if buf[0] != stateZ {
				t.Fatalf("kind %q, want %q", buf[0], stateZ)
			}
			// What any inflater makes of it: the JSON sent.
			got, err := io.ReadAll(flate.NewReader(bytes.NewReader(buf[1:])))
			if err != nil {
				t.Fatalf("inflating: %v", err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("inflated %d bytes, want the %d bytes of JSON", len(got), len(plain))
			}
			if len(plain) > maxStored && len(buf) >= len(plain) {
				t.Errorf("a %d-byte state went as %d bytes: not compressed", len(plain), len(buf))
			}
			back, err := decodeState(buf)
			if err != nil {
				t.Fatal(err)
			}
			if len(back.Nodes) != 1 || len(back.Nodes[0].Entries) != n || back.EventClock != 3 {
				t.Fatalf("decoded %+v", back)
			}
		})
	}
}

// stored splits what is longer than a stored block (65,535 bytes).
func TestStoredBlocks(t *testing.T) {
	for _, n := range []int{0, 1, 65535, 65536, 200000} {
		b := bytes.Repeat([]byte("pier"), n/4+1)[:n]
		got, err := inflate(stored(stateZ, b)[1:], int64(n))
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got, b) {
			t.Fatalf("%d bytes: got %d back", n, len(got))
		}
	}
}

// oldEncodeState is encodeState as agents before the one-pass decoding
// wrote it: []registry.NodeState as JSON, deflated at the default level.
func oldEncodeState(t *testing.T, nodes []registry.NodeState, kv []registry.Entry) []byte {
	t.Helper()
	b, err := json.Marshal(struct {
		Nodes []registry.NodeState `json:"n"`
		KV    []registry.Entry     `json:"kv,omitempty"`
	}{nodes, kv})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.WriteByte(stateZ)
	w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// What an older agent sends decodes to the same entries as before, and a
// KV key whose invalid UTF-8 the JSON replaced is still refused by the
// registry, wherever it comes (a broadcast, a node's state, the KV part of
// a state), while a real U+FFFD is kept.
func TestDecodeOlderAgentsState(t *testing.T) {
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address = "n0", "127.0.0.1"
	reg, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	kv := func(key string, v uint64) registry.Entry {
		return registry.Entry{Node: "n1", Kind: registry.KindKV, Key: key, Version: v, KV: &registry.KVValue{Value: []byte("x")}}
	}
	nodes := joinStates(3)
	for _, e := range []registry.Entry{kv("u/state\xffkey", 10), kv("u/state\ufffdkey", 11)} {
		e.Node = nodes[1].Node // a node's state holds its own entries only
		nodes[1].Entries = append(nodes[1].Entries, e)
	}
	buf := oldEncodeState(t, nodes, []registry.Entry{kv("u/kv\xffkey", 12), kv("u/kv\ufffdkey", 13)})
	st, err := decodeState(buf)
	if err != nil {
		t.Fatal(err)
	}
	// What the decoding before gave (registry.Entry's own UnmarshalJSON).
	var old struct {
		Nodes []registry.NodeState `json:"n"`
	}
	plain, err := inflate(buf[1:], maxState)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(plain, &old); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(old.Nodes)
	if got, _ := json.Marshal(st.Nodes); !bytes.Equal(got, want) {
		t.Fatalf("decoded nodes:\n%s\nwant\n%s", got, want)
	}
	var fresh []string
	for _, e := range append(reg.MergeStates(st.Nodes), reg.Merge(st.KV)...) {
		if e.Kind == registry.KindKV {
			fresh = append(fresh, e.Key)
		}
	}
	for _, e := range []registry.Entry{kv("u/bcast\xffkey", 14), kv("u/bcast\ufffdkey", 15)} {
		msg, err := encodeEntry(e)
		if err != nil {
			t.Fatal(err)
		}
		d, err := decodeEntry(msg)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range reg.Merge([]registry.Entry{d}) {
			fresh = append(fresh, m.Key)
		}
	}
	if w := []string{"u/state\ufffdkey", "u/kv\ufffdkey", "u/bcast\ufffdkey"}; fmt.Sprint(fresh) != fmt.Sprint(w) {
		t.Errorf("KV keys merged: %q, want %q", fresh, w)
	}
}
