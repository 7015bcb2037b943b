package gossip

import (
	"fmt"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// joinStates is what a node of a 100-node cluster holds and exchanges in a
// join: each node's record and one service with a check.
func joinStates(n int) []registry.NodeState {
	var out []registry.NodeState
	for i := range n {
		name := fmt.Sprintf("n%03d", i)
		v := uint64(1_700_000_000_000+i) << 16
		out = append(out, registry.NodeState{Node: name, Complete: v + 2, Entries: []registry.Entry{
			{Node: name, Kind: registry.KindNode, Version: v, NodeInfo: &registry.Node{
				ID: fmt.Sprintf("6b1f3c2e-0d4a-4f1e-9c3b-%012d", i), Name: name, Address: fmt.Sprintf("127.0.1.%d", i+1), Datacenter: "dc1",
				TaggedAddresses: map[string]string{"lan": fmt.Sprintf("127.0.1.%d", i+1), "wan": fmt.Sprintf("127.0.1.%d", i+1)},
			}},
			{Node: name, Kind: registry.KindService, Key: "web", Version: v + 1, Service: &registry.Service{ID: "web", Name: "web", Port: 8080, Tags: []string{"v1"}}},
			{Node: name, Kind: registry.KindCheck, Key: "service:web", Version: v + 2, Check: &registry.Check{CheckID: "service:web", Name: "Service 'web' check", ServiceID: "web", ServiceName: "web", Status: registry.StatusPassing}},
		}})
	}
	return out
}

// BenchmarkRepairStates is one repair exchange's statesMsg of 30 owners:
// encoded by its sender, decoded by its receiver.
func BenchmarkRepairStates(b *testing.B) {
	msg := statesMsg{From: "n000", Nodes: joinStates(30)}
	buf, err := deflateJSON(msgStates, msg)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := deflateJSON(msgStates, msg); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(buf)), "bytes")
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var s statesMsg
			if err := inflateJSON(buf[1:], &s); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkJoinState is the push/pull state a joiner of a 100-node
// cluster receives, decoded.
func BenchmarkJoinState(b *testing.B) {
	buf, err := encodeState(state{Nodes: joinStates(100)})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(buf)), "bytes")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeState(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEntryCopy is a broadcast of a node's record received again: the
// header read and the contents skipped, against decoding it whole.
func BenchmarkEntryCopy(b *testing.B) {
	msg, err := encodeEntry(joinStates(1)[0].Entries[0])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decoded", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeEntry(msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("skipped", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok, err := decodeEntryIf(msg, func(entryHeader) bool { return true }); ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
}
