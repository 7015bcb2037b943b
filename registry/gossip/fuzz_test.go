package gossip

import (
	"testing"

	"github.com/pier-dev/pier/registry"
)

// FuzzGossipMessages feeds arbitrary bytes, as a peer could send them, to the
// decoders of broadcasts and push/pull states and merges whatever decodes
// into a registry: nothing may panic, and this node's own records must
// survive.
func FuzzGossipMessages(f *testing.F) {
	svc := registry.Service{ID: "redis1", Name: "redis", Port: 8000, Weights: registry.Weights{Passing: 1, Warning: 1}}
	for _, e := range []registry.Entry{
		{Node: "n2", Kind: registry.KindService, Key: "redis1", Version: 7, Service: &svc},
		{Node: "n2", Kind: registry.KindService, Key: "redis1", Version: 8, Deleted: true},
		{Node: "n2", Kind: registry.KindKV, Key: "app/x", Version: 9, KV: &registry.KVValue{Value: []byte("v")}},
		{Node: "n1", Kind: registry.KindNode, Version: 1 << 62, NodeInfo: &registry.Node{Name: "n1"}},
	} {
		b, _ := encodeEntry(e)
		f.Add(b)
	}
	st, _ := encodeState(state{Nodes: []registry.NodeState{{Node: "n2", Complete: 10, Entries: []registry.Entry{{Node: "n2", Kind: registry.KindService, Key: "redis1", Version: 7, Service: &svc}}}}})
	f.Add(st)
	f.Add([]byte{msgEntryZ, 0xff, 0x00})
	f.Add([]byte{stateZ})
	f.Fuzz(func(t *testing.T, b []byte) {
		rc := registry.DefaultConfig()
		rc.NodeName, rc.Address = "n1", "127.0.0.1"
		reg, err := registry.New(rc)
		if err != nil {
			t.Fatal(err)
		}
		reg.SetMemberStatus("n2", "127.0.0.2", registry.MemberAlive)
		if e, err := decodeEntry(b); err == nil {
			reg.Merge([]registry.Entry{e})
		}
		if s, err := decodeState(b); err == nil {
			reg.MergeStates(s.Nodes)
			reg.Merge(s.KV)
		}
		snap := reg.Snapshot()
		if n, ok := snap.Node("n1"); !ok || n.Address != "127.0.0.1" {
			t.Fatalf("this node's own record was changed by a peer: %+v", n)
		}
		if _, ok := snap.NodeService("n1", registry.AgentServiceID); !ok {
			t.Fatal("this node's own service was removed by a peer")
		}
	})
}
