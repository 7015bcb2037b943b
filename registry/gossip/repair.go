package gossip

import (
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
)

// Repair of missed broadcasts. A broadcast is sent a bounded number of
// times, so now and then a node misses one (under load, 3 writes in 100 at
// 97 nodes); push/pull would repair it only after a minute or more. So every
// DigestInterval each node sends one random member a digest of everything it
// holds (one UDP packet); a member whose digest differs answers with one
// hash per owner (TCP), the first sends its states of the owners that
// differ, and the second answers with its own states of them: after the
// exchange both hold the newer of every entry of those owners.
const (
	msgDigest  byte = 'd' // digestMsg, JSON
	msgOwners  byte = 'o' // ownersMsg, deflated JSON
	msgStates  byte = 's' // statesMsg, deflated JSON
	kvOwner         = "\x00kv"
	maxDigestQ      = 16
)

type digestMsg struct {
	From string `json:"f"`
	Root uint64 `json:"r"`
}

type ownersMsg struct {
	From   string            `json:"f"`
	Owners map[string]uint64 `json:"o"`
}

type statesMsg struct {
	From   string               `json:"f"`
	Reply  bool                 `json:"r,omitempty"`
	Nodes  []registry.NodeState `json:"n,omitempty"`
	KV     []registry.Entry     `json:"kv,omitempty"`
	WithKV bool                 `json:"k,omitempty"`
}

// digests hashes every owner's entries (versions and deletions, not
// contents: a version names one content) and the KV store as one more
// owner. The sum of entry hashes does not depend on order.
// Entries younger than repairGrace are left out: their broadcasts are
// still on the way, and counting them would make every digest differ while
// changes flow (a join of 100 nodes turned into a full-state exchange per
// node per second).
func (g *Gossip) digests() (map[string]uint64, []registry.NodeState, []registry.Entry) {
	nodes, kv := g.reg.FullState(), g.reg.KVState()
	cut := uint64(time.Now().Add(-repairGrace).UnixMilli()) << 16
	out := make(map[string]uint64, len(nodes)+1)
	for _, st := range nodes {
		out[st.Node] = hashEntries(st.Entries, cut)
	}
	out[kvOwner] = hashEntries(kv, cut)
	return out, nodes, kv
}

// repairGrace is about how long a broadcast takes to reach 100 nodes.
const repairGrace = time.Second

func hashEntries(es []registry.Entry, cut uint64) uint64 {
	var sum uint64
	var b [9]byte
	for _, e := range es {
		if e.Version > cut {
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(e.Node))
		h.Write([]byte{0, byte(e.Kind)})
		h.Write([]byte(e.Key))
		binary.BigEndian.PutUint64(b[:8], e.Version)
		b[8] = 0
		if e.Deleted {
			b[8] = 1
		}
		h.Write(b[:])
		sum += h.Sum64()
	}
	return sum
}

func rootOf(owners map[string]uint64) uint64 {
	var sum uint64
	for o, h := range owners {
		f := fnv.New64a()
		f.Write([]byte(o))
		sum += f.Sum64() * (h | 1)
	}
	return sum
}

// sendDigest sends this node's digest to one random alive member.
func (g *Gossip) sendDigest() {
	peer := g.randomPeer()
	if peer == nil {
		return
	}
	owners, _, _ := g.digests()
	b, _ := json.Marshal(digestMsg{From: g.reg.NodeName(), Root: rootOf(owners)})
	g.ml.SendBestEffort(peer, append([]byte{msgDigest}, b...))
}

func (g *Gossip) randomPeer() *memberlist.Node {
	self := g.reg.NodeName()
	var peers []*memberlist.Node
	g.mu.Lock()
	for name, m := range g.members {
		if name != self && m.Status == registry.MemberAlive {
			peers = append(peers, &memberlist.Node{Name: name, Addr: net.ParseIP(m.Addr), Port: uint16(m.Port)})
		}
	}
	g.mu.Unlock()
	if len(peers) == 0 {
		return nil
	}
	return peers[rand.IntN(len(peers))]
}

func (g *Gossip) peer(name string) *memberlist.Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	m, ok := g.members[name]
	if !ok || m.Status != registry.MemberAlive || name == g.reg.NodeName() {
		return nil
	}
	return &memberlist.Node{Name: name, Addr: net.ParseIP(m.Addr), Port: uint16(m.Port)}
}

// reliable sends msg over TCP from the repair worker: the gossip loop must
// not wait on a connection. A full queue drops it; the next round retries.
func (g *Gossip) reliable(to *memberlist.Node, msg []byte) {
	select {
	case g.repairQ <- func() { g.ml.SendReliable(to, msg) }:
	default:
	}
}

func (g *Gossip) onDigest(buf []byte) {
	var d digestMsg
	if json.Unmarshal(buf, &d) != nil {
		return
	}
	owners, _, _ := g.digests()
	if rootOf(owners) == d.Root {
		return
	}
	to := g.peer(d.From)
	if to == nil {
		return
	}
	b, err := deflateJSON(msgOwners, ownersMsg{From: g.reg.NodeName(), Owners: owners})
	if err == nil {
		g.reliable(to, b)
	}
}

func (g *Gossip) onOwners(buf []byte) {
	var o ownersMsg
	if inflateJSON(buf, &o) != nil {
		return
	}
	to := g.peer(o.From)
	if to == nil {
		return
	}
	mine, nodes, kv := g.digests()
	out := statesMsg{From: g.reg.NodeName()}
	for _, st := range nodes {
		if o.Owners[st.Node] != mine[st.Node] {
			out.Nodes = append(out.Nodes, st)
		}
	}
	// Owners the other has and this node does not: ask with an empty state
	// (complete 0 drops nothing), so that the answer brings them.
	for name := range o.Owners {
		if _, ok := mine[name]; !ok && name != kvOwner {
			out.Nodes = append(out.Nodes, registry.NodeState{Node: name})
		}
	}
	if o.Owners[kvOwner] != mine[kvOwner] {
		out.KV, out.WithKV = kv, true
	}
	if len(out.Nodes) == 0 && !out.WithKV {
		return
	}
	if b, err := deflateJSON(msgStates, out); err == nil {
		g.reliable(to, b)
	}
}

// onStates merges what a member sent and, unless it is itself an answer,
// answers with this node's states of the same owners.
func (g *Gossip) onStates(buf []byte) {
	var s statesMsg
	if inflateJSON(buf, &s) != nil {
		return
	}
	fresh := append(g.reg.MergeStates(s.Nodes), g.reg.Merge(s.KV)...)
	g.met.repaired(len(fresh))
	if s.Reply {
		return
	}
	to := g.peer(s.From)
	if to == nil {
		return
	}
	want := make(map[string]bool, len(s.Nodes))
	for _, st := range s.Nodes {
		want[st.Node] = true
	}
	_, nodes, kv := g.digests()
	out := statesMsg{From: g.reg.NodeName(), Reply: true}
	for _, st := range nodes {
		if want[st.Node] {
			out.Nodes = append(out.Nodes, st)
		}
	}
	if s.WithKV {
		out.KV, out.WithKV = kv, true
	}
	if b, err := deflateJSON(msgStates, out); err == nil {
		g.reliable(to, b)
	}
}

func deflateJSON(kind byte, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return deflate(kind, b)
}

func inflateJSON(buf []byte, v any) error {
	b, err := inflate(buf, 16*maxState)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
