package gossip

import (
	"cmp"
	"encoding/json"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
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
	msgDigest byte = 'd' // digestMsg, JSON
	msgOwners byte = 'o' // ownersMsg, deflated JSON
	msgStates byte = 's' // statesMsg, deflated JSON
	kvOwner        = "\x00kv"
	// maxDigestQ bounds the repair exchanges waiting for the worker; past
	// it a digest that differs is left to a later round, before anything is
	// computed for it: in a join storm every digest differs, and computing
	// whole states for exchanges that would be dropped took the CPU the
	// join needed.
	maxDigestQ = 4
)

type digestMsg struct {
	From string `json:"f"`
	Addr string `json:"a,omitempty"` // the sender's gossip address, for a receiver that does not know it
	Root uint64 `json:"r"`
}

type ownersMsg struct {
	From   string            `json:"f"`
	Owners map[string]uint64 `json:"o"`
	Addrs  map[string]string `json:"a,omitempty"` // gossip address of each alive member
	// Nodes are the sender's states of the owners it saw change last (at
	// most maxPushOwners, changed within recentWindow before the grace):
	// a missed broadcast is nearly always one of them, so the digest's
	// sender has it at this first answer rather than after two more
	// messages. Nodes of earlier versions ignore the field.
	Nodes nodeStates `json:"n,omitempty"`
}

type statesMsg struct {
	From   string            `json:"f"`
	Reply  bool              `json:"r,omitempty"`
	Nodes  nodeStates        `json:"n,omitempty"`
	KV     []registry.Entry  `json:"kv,omitempty"`
	WithKV bool              `json:"k,omitempty"`
	Addrs  map[string]string `json:"a,omitempty"` // gossip addresses of members the receiver lacks
}

// digests hashes every owner's entries (versions and deletions, not
// contents: a version names one content) and the KV store as one more
// owner. The sum of entry hashes does not depend on order.
// Entries younger than repairGrace are left out: their broadcasts are
// still on the way, and counting them would make every digest differ while
// changes flow (a join of 100 nodes turned into a full-state exchange per
// node per second).
// It walks the registry in place and allocates only the map: it runs once
// a second for the digest sent and once for each one received, and copying
// the whole state there was most of what an idle agent allocated.
func (g *Gossip) digests() map[string]uint64 { return g.digestsRecent(nil) }

// digestsRecent is digests, and also notes in recent, when not nil, the
// newest counted version of each owner that changed within recentWindow
// before the grace (nothing is allocated for it while nothing changes).
func (g *Gossip) digestsRecent(recent map[string]uint64) map[string]uint64 {
	now := time.Now()
	cut := uint64(now.Add(-repairGrace).UnixMilli()) << 16
	since := uint64(now.Add(-repairGrace-recentWindow).UnixMilli()) << 16
	young := g.youngMembers(now)
	out := make(map[string]uint64, g.lastOwners+1)
	out[kvOwner] = 0
	g.reg.EachVersion(func(node string) {
		if !young[node] {
			out[node] += 0
		}
	}, func(owner string, e registry.Entry) {
		if owner == "" {
			owner = kvOwner
		}
		if e.Version <= cut && !young[owner] {
			out[owner] += hashEntry(&e)
			if recent != nil && e.Version > since && owner != kvOwner && e.Version > recent[owner] {
				recent[owner] = e.Version
			}
		}
	})
	g.lastOwners = len(out)
	return out
}

// repairGrace is about how long a broadcast takes to reach 100 nodes.
const repairGrace = time.Second

// recentWindow and maxPushOwners bound what an answer to a digest pushes
// unasked: the states of the owners that changed last, which is where a
// missed broadcast is (at 10 writes a second, 16 owners cover the 1.6 s
// past the grace). More would cost bytes at every digest that differs
// while changes flow; an older miss is found by the owner hashes.
const (
	recentWindow  = 3 * time.Second
	maxPushOwners = 16
)

// newestOwners picks the names of the maxPushOwners owners with the newest
// versions in recent.
func newestOwners(recent map[string]uint64) map[string]bool {
	if len(recent) == 0 {
		return nil
	}
	names := make([]string, 0, len(recent))
	for n := range recent {
		names = append(names, n)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Compare(recent[b], recent[a]) })
	out := make(map[string]bool, min(len(names), maxPushOwners))
	for _, n := range names[:min(len(names), maxPushOwners)] {
		out[n] = true
	}
	return out
}

// youngMembers are the members whose status changed within repairGrace:
// the digest leaves them out, as it leaves out young entries, so that a
// join of many nodes at once is not a whole-state exchange between every
// pair of nodes that heard of a newcomer a moment apart.
func (g *Gossip) youngMembers(now time.Time) map[string]bool {
	var young map[string]bool
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, m := range g.members {
		if now.Sub(m.since) < repairGrace && name != g.reg.NodeName() {
			if young == nil {
				young = map[string]bool{}
			}
			young[name] = true
		}
	}
	return young
}

// memberAddrs returns the gossip address of each alive member in names
// (all of them when names is nil), this node's included.
func (g *Gossip) memberAddrs(names map[string]bool) map[string]string {
	out := map[string]string{}
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, m := range g.members {
		if m.Status == registry.MemberAlive && (names == nil || names[name]) {
			out[name] = net.JoinHostPort(m.Addr, strconv.Itoa(m.Port))
		}
	}
	return out
}

// joinMissing joins each member another node named that this node has
// not heard of for missingGrace. memberlist spreads a join by a bounded
// number of alive messages, so now and then a node misses one (1 node in 50
// lacked a member for over a minute in deploy/bench/gossip.sh), and only
// push/pull, every 60 to 90 s at 50 to 100 nodes, would tell it; the digest
// exchange finds it within seconds, and a join (one push/pull with that
// member) tells both. The grace leaves a member that is joining right now
// to its alive messages: in a join of 50 nodes at once nearly every node
// hears a newcomer's digest before its alive message.
func (g *Gossip) joinMissing(addrs map[string]string) {
	now := time.Now()
	for name, addr := range addrs {
		host, p, err := net.SplitHostPort(addr)
		port, perr := strconv.ParseUint(p, 10, 16)
		if err != nil || perr != nil || validMember(name, net.ParseIP(host), uint16(port)) != nil {
			continue
		}
		g.mu.Lock()
		if _, known := g.members[name]; known {
			delete(g.missing, name)
			g.mu.Unlock()
			continue
		}
		m := g.missing[name]
		if m == nil {
			// Bounded by what the cluster lists: entries go once known,
			// or when not named again for a while (below).
			m = &missingMember{heard: now}
			g.missing[name] = m
		}
		m.named = now
		due := now.Sub(m.heard) >= missingGrace && now.Sub(m.tried) >= rejoinPause
		if due {
			m.tried = now
		}
		for n, o := range g.missing {
			if now.Sub(o.named) >= rejoinPause {
				delete(g.missing, n)
			}
		}
		g.mu.Unlock()
		if !due {
			continue
		}
		g.log.Info("joining a member that others list and this node had not heard of", "node", name, "addr", addr)
		g.met.memberRepaired()
		g.background(func() error {
			_, err := g.ml.Join([]string{addr})
			return err
		}, nil)
	}
}

// missingMember is a member others named that this node does not know.
type missingMember struct {
	heard time.Time // first named
	named time.Time // last named
	tried time.Time // last joined
}

// missingGrace is how long a member others name may stay unknown here
// before this node joins it: its alive messages reach 100 nodes in about a
// second.
const missingGrace = 2 * time.Second

// rejoinPause is how long joinMissing leaves a member it tried to join.
const rejoinPause = 10 * time.Second

// hashEntry is FNV-1a (64 bits) of the entry's identity and version, written
// out so that nothing is allocated per entry; nodes of earlier versions
// hashed the same bytes with hash/fnv, so their digests still agree.
func hashEntry(e *registry.Entry) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for i := 0; i < len(e.Node); i++ {
		h = (h ^ uint64(e.Node[i])) * prime
	}
	h = (h ^ 0) * prime
	h = (h ^ uint64(byte(e.Kind))) * prime
	for i := 0; i < len(e.Key); i++ {
		h = (h ^ uint64(e.Key[i])) * prime
	}
	for i := 56; i >= 0; i -= 8 {
		h = (h ^ (e.Version >> i & 0xff)) * prime
	}
	var del uint64
	if e.Deleted {
		del = 1
	}
	return (h ^ del) * prime
}

func rootOf(owners map[string]uint64) uint64 {
	var sum uint64
	for o, h := range owners {
		sum += fnv64a(o) * (h | 1)
	}
	return sum
}

func fnv64a(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// settleGrace, settleMembers and maxRepairPause hold the repair back while
// many members join at once. In a join of 100 agents every node learns of
// a newcomer a moment apart from the others, and of its entries a moment
// later, for several seconds: every digest differed, and each exchange
// copied, deflated and merged the states of dozens of owners that were
// still on their way by broadcast. Those exchanges took four fifths of
// the CPU an agent spent in the join and held the gossip loop (which also
// reports members) away from memberlist's news, and the join converged in
// 2.6 to 3.9 s after the last agent started where plain memberlist took
// 0.6 to 0.9 s (deploy/bench/gossip.sh). So a node where more than
// settleMembers members changed status within settleGrace neither sends a
// digest nor answers one; what is missing once it settles is repaired
// then. A single join or failure does not pause it, and a node that has
// not taken part in a repair for maxRepairPause does, joins or not, so
// that a cluster where members come and go all the time is still
// repaired.
const (
	settleGrace    = 2 * time.Second
	settleMembers  = 1
	maxRepairPause = 10 * time.Second
)

// repairPaused reports whether members are joining (or leaving) here too
// fast for a digest exchange to tell a missed message from one on its way.
// It runs on the gossip loop, which alone touches lastRepair.
func (g *Gossip) repairPaused(now time.Time) bool {
	if now.Sub(g.lastRepair) >= maxRepairPause {
		return false
	}
	changed := 0
	self := g.reg.NodeName()
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, m := range g.members {
		if name != self && now.Sub(m.since) < settleGrace {
			if changed++; changed > settleMembers {
				return true
			}
		}
	}
	return false
}

// sendDigest sends this node's digest to one random alive member, unless
// the repair is paused while members join.
func (g *Gossip) sendDigest() {
	now := time.Now()
	if g.repairPaused(now) {
		g.met.repairPaused()
		return
	}
	g.lastRepair = now
	peer := g.randomPeer()
	if peer == nil {
		return
	}
	b, _ := json.Marshal(digestMsg{From: g.reg.NodeName(), Addr: g.Addr(), Root: rootOf(g.digests())})
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

// repairBusy reports whether the repair worker has no room for another
// exchange; the caller then skips it (the next round retries).
func (g *Gossip) repairBusy() bool { return len(g.repairQ) >= cap(g.repairQ) }

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
	to := g.peer(d.From)
	if to == nil {
		// A sender this node has never heard of is a member it missed.
		g.joinMissing(map[string]string{d.From: d.Addr})
		return
	}
	if g.repairBusy() {
		return
	}
	now := time.Now()
	if g.repairPaused(now) {
		g.met.repairPaused()
		return
	}
	g.lastRepair = now
	recent := map[string]uint64{}
	owners := g.digestsRecent(recent)
	if rootOf(owners) == d.Root {
		return
	}
	msg := ownersMsg{From: g.reg.NodeName(), Owners: owners, Addrs: g.memberAddrs(nil)}
	if push := newestOwners(recent); push != nil {
		msg.Nodes = g.reg.StatesOf(push)
	}
	b, err := deflateJSON(msgOwners, msg)
	if err == nil {
		g.reliable(to, b)
	}
}

func (g *Gossip) onOwners(buf []byte) {
	var o ownersMsg
	if inflateJSON(buf, &o) != nil {
		return
	}
	g.joinMissing(o.Addrs)
	if len(o.Nodes) > 0 {
		// What the other pushed first: what this node missed is then no
		// longer among the owners that differ.
		g.met.repaired(len(g.reg.MergeStates(o.Nodes)))
	}
	to := g.peer(o.From)
	if to == nil || g.repairBusy() {
		return
	}
	mine := g.digests()
	out := statesMsg{From: g.reg.NodeName()}
	differ := map[string]bool{}
	for _, hs := range []map[string]uint64{mine, o.Owners} {
		for name := range hs {
			if o.Owners[name] != mine[name] && name != kvOwner {
				differ[name] = true
			}
		}
	}
	if len(differ) > 0 {
		out.Nodes = g.reg.StatesOf(differ)
	}
	// Owners the other has and this node does not: ask with an empty state
	// (complete 0 drops nothing), so that the answer brings them.
	sent := make(map[string]bool, len(out.Nodes))
	for _, st := range out.Nodes {
		sent[st.Node] = true
	}
	for name := range o.Owners {
		if _, ok := mine[name]; !ok && name != kvOwner && !sent[name] {
			out.Nodes = append(out.Nodes, registry.NodeState{Node: name})
		}
	}
	// Members the other lacks: their addresses, so that it joins them.
	lacks := map[string]bool{}
	for name := range mine {
		if _, ok := o.Owners[name]; !ok && name != kvOwner {
			lacks[name] = true
		}
	}
	if len(lacks) > 0 {
		out.Addrs = g.memberAddrs(lacks)
	}
	if o.Owners[kvOwner] != mine[kvOwner] {
		out.KV, out.WithKV = g.reg.KVState(), true
	}
	if len(out.Nodes) == 0 && !out.WithKV && len(out.Addrs) == 0 {
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
	g.joinMissing(s.Addrs)
	fresh := append(g.reg.MergeStates(s.Nodes), g.reg.Merge(s.KV)...)
	g.met.repaired(len(fresh))
	if s.Reply {
		return
	}
	to := g.peer(s.From)
	if to == nil || g.repairBusy() {
		return
	}
	want := make(map[string]bool, len(s.Nodes))
	for _, st := range s.Nodes {
		want[st.Node] = true
	}
	out := statesMsg{From: g.reg.NodeName(), Reply: true}
	if len(want) > 0 {
		out.Nodes = g.reg.StatesOf(want)
	}
	if s.WithKV {
		out.KV, out.WithKV = g.reg.KVState(), true
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
