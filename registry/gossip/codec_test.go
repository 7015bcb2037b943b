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
