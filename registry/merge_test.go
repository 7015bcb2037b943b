package registry

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// The merge rules of replica.go make gossip order-free: each (node, kind,
// key) keeps the entry with the highest version, a tombstone is an entry
// like any other, and a node's whole state (push/pull) removes what the
// node no longer has up to its Complete version. FuzzMergeOrder checks that
// directly: whatever order and however often the same updates arrive, as
// single entries or inside whole node states, every registry ends with the
// same catalog, and it is the catalog of the newest entry of each key.

// mergeOp is one update that the cluster delivers: one entry, or the whole
// state of a node as it was after some of its changes.
type mergeOp struct {
	entry *Entry
	state *NodeState
}

var mergeNodes = []string{"n1", "n2", "n3"}

// genMerge turns fuzz bytes into the changes of three nodes, each stamped by
// the node's own clock (versions only grow per node, as the hybrid logical
// clock guarantees), and every whole state a node could send on the way.
// Every 3 bytes are one change: which node, what (node record, service or
// check, or a deletion of one) and which key.
func genMerge(data []byte) (ops []mergeOp, newest map[string]map[entryKey]Entry) {
	base := uint64(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()) << 16
	version := map[string]uint64{}
	newest = map[string]map[entryKey]Entry{}
	for _, n := range mergeNodes {
		newest[n] = map[entryKey]Entry{}
	}
	for i := 0; i+2 < len(data) && len(ops) < 200; i += 3 {
		node := mergeNodes[int(data[i])%len(mergeNodes)]
		what, key := data[i+1], fmt.Sprintf("k%d", data[i+2]%4)
		// A jump of the wall clock or a burst within one millisecond:
		// either way the version grows.
		version[node] += 1 + uint64(data[i+2]>>2)<<16
		v := base + version[node]
		e := Entry{Node: node, Version: v}
		switch what % 6 {
		case 0: // the node's own record; nodes never delete it
			e.Kind = KindNode
			e.NodeInfo = &Node{Name: node, Address: fmt.Sprintf("10.0.%d.%d", what, data[i+2]), Meta: map[string]string{"v": fmt.Sprint(v)}}
		case 1, 2:
			e.Kind, e.Key = KindService, key
			e.Service = &Service{ID: key, Name: "svc-" + key[1:], Port: int(v % 65536), Tags: []string{fmt.Sprint(what)}}
		case 3:
			e.Kind, e.Key = KindCheck, key
			sid := ""
			if what&8 != 0 {
				sid = key // the service of the same key, whether it exists or not
			}
			e.Check = &Check{CheckID: key, Name: "check", ServiceID: sid, Status: []Status{StatusPassing, StatusWarning, StatusCritical}[int(what/8)%3], Output: fmt.Sprint(v)}
		case 4:
			e.Kind, e.Key, e.Deleted = KindService, key, true
		case 5:
			e.Kind, e.Key, e.Deleted = KindCheck, key, true
		}
		newest[node][e.key()] = e
		ops = append(ops, mergeOp{entry: &e})
		if what&0x40 != 0 {
			// The node's state as a push/pull would send it now.
			st := NodeState{Node: node, Complete: v}
			for _, cur := range newest[node] {
				st.Entries = append(st.Entries, cur)
			}
			ops = append(ops, mergeOp{state: &st})
		}
	}
	return ops, newest
}

// mergeRegistry is a registry of a fourth node to which the three are
// members, as gossip reports them before any of their entries arrive.
func mergeRegistry(t *testing.T) *Registry {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeName, cfg.Address = "self", "127.0.0.1"
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range mergeNodes {
		r.SetMemberStatus(n, fmt.Sprintf("10.1.0.%d", i+1), MemberAlive)
	}
	return r
}

// mergeAll merges ops in order, and checks on the way that an entry Holds
// reports as held is one Merge refuses (the gossip layer skips decoding
// those).
func mergeAll(t *testing.T, r *Registry, ops []mergeOp) {
	t.Helper()
	for _, op := range ops {
		if e := op.entry; e != nil {
			held := r.Holds(e.Node, e.Kind, e.Key, e.Version)
			if fresh := r.Merge([]Entry{*e}); held && len(fresh) > 0 {
				t.Fatalf("Holds reported %s %d %q v%d held, Merge took it", e.Node, e.Kind, e.Key, e.Version)
			}
		} else {
			r.MergeStates([]NodeState{*op.state})
		}
	}
}

// catalogOf is what the registry's catalog holds of the three nodes, without
// the Raft-style indexes (they count changes, which depend on the order).
func catalogOf(t *testing.T, r *Registry) string {
	t.Helper()
	snap := r.Snapshot()
	var b strings.Builder
	for _, n := range mergeNodes {
		js := func(v any) string {
			out, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			return string(out)
		}
		if ne, ok := snap.Node(n); ok {
			fmt.Fprintf(&b, "node %s\n", js(ne.Node))
		}
		for _, s := range snap.NodeServices(n) {
			fmt.Fprintf(&b, "  service %s\n", js(s.Service))
		}
		for _, c := range snap.AllNodeChecks(n) {
			fmt.Fprintf(&b, "  check %s\n", js(c.Check))
		}
	}
	return b.String()
}

func FuzzMergeOrder(f *testing.F) {
	f.Add([]byte("\x00\x00\x01\x01\x01\x01\x01\x03\x01\x01\x04\x01\x01\x05\x01"), uint64(1))
	f.Add([]byte("\x00\x01\x00\x00\x43\x00\x00\x04\x00\x00\x0b\x00\x00\x45\x00\x00\x01\x00"), uint64(7))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		ops, newest := genMerge(data)
		if len(ops) == 0 {
			return
		}
		inOrder := mergeRegistry(t)
		mergeAll(t, inOrder, ops)
		want := catalogOf(t, inOrder)

		// Only the newest entry of each key, once: the catalog the rules
		// promise, whatever came before.
		model := mergeRegistry(t)
		for _, n := range mergeNodes {
			var es []Entry
			for _, e := range newest[n] {
				es = append(es, e)
			}
			slices.SortFunc(es, func(a, b Entry) int { return int(a.Kind) - int(b.Kind) })
			model.Merge(es)
		}
		if got := catalogOf(t, model); got != want {
			t.Fatalf("in order:\n%s\nonly the newest of each key:\n%s", want, got)
		}

		// Shuffled, with some updates delivered twice and late.
		rng := rand.New(rand.NewPCG(seed, uint64(len(data))))
		shuffled := slices.Clone(ops)
		for _, i := range rng.Perm(len(ops))[:len(ops)/3] {
			shuffled = append(shuffled, ops[i])
		}
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		other := mergeRegistry(t)
		mergeAll(t, other, shuffled)
		if got := catalogOf(t, other); got != want {
			t.Fatalf("in order:\n%s\nshuffled (seed %d):\n%s", want, seed, got)
		}
		// Everything once more changes nothing: merging is idempotent.
		mergeAll(t, other, ops)
		if got := catalogOf(t, other); got != want {
			t.Fatalf("in order:\n%s\nshuffled, then everything again:\n%s", want, got)
		}
	})
}

// Holds reports an entry as held exactly when Merge would refuse it for its
// version: for members, for a node not yet a member (its entries wait), and
// never for KV entries or this node's own.
func TestHolds(t *testing.T) {
	r := mergeRegistry(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var held, taken int
	for range 200 {
		data := make([]byte, 3*rng.IntN(30))
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		ops, _ := genMerge(data)
		for _, op := range ops {
			if e := op.entry; e != nil {
				h := r.Holds(e.Node, e.Kind, e.Key, e.Version)
				fresh := r.Merge([]Entry{*e})
				switch {
				case h && len(fresh) > 0:
					t.Fatalf("Holds reported %s %d %q v%d held, Merge took it", e.Node, e.Kind, e.Key, e.Version)
				case h:
					held++
				case len(fresh) > 0:
					taken++
				}
			} else {
				r.MergeStates([]NodeState{*op.state})
			}
		}
	}
	if held == 0 || taken == 0 {
		t.Fatalf("held %d, taken %d: the generator made no copies or no news", held, taken)
	}
	svc := Entry{Node: "later", Kind: KindService, Key: "web", Version: 10, Service: &Service{ID: "web", Name: "web"}}
	if r.Holds(svc.Node, svc.Kind, svc.Key, svc.Version) || len(r.Merge([]Entry{svc})) != 1 {
		t.Fatal("a node not yet a member: its first entry is not held, and waits")
	}
	if !r.Holds(svc.Node, svc.Kind, svc.Key, 10) || r.Holds(svc.Node, svc.Kind, svc.Key, 11) {
		t.Fatal("a waiting entry is held at its version, not above")
	}
	self := Entry{Node: "self", Kind: KindService, Key: "x", Version: 1 << 60, Deleted: true}
	r.Merge([]Entry{self})
	if r.Holds(self.Node, self.Kind, self.Key, 1) {
		t.Fatal("this node's own entries are never reported held: merging them moves the clock")
	}
	kv := Entry{Node: "n1", Kind: KindKV, Key: "k", Version: 5, KV: &KVValue{Value: []byte("v")}}
	r.Merge([]Entry{kv})
	if r.Holds(kv.Node, kv.Kind, kv.Key, 1) {
		t.Fatal("KV entries are never reported held")
	}
}

// The hybrid logical clock behind every version: versions only grow, when
// the wall clock steps back, within one millisecond, and past any version
// seen from the cluster; a restarted node (a new clock) issues versions
// above its old ones as soon as its wall clock has moved on.
func TestClockVersionsOnlyGrow(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	c := &clock{now: func() time.Time { return now }}
	last := c.next()
	step := func(what string, v uint64) {
		t.Helper()
		if v <= last {
			t.Fatalf("%s: version %#x not above %#x", what, v, last)
		}
		last = v
	}
	step("same millisecond", c.next())
	now = now.Add(-time.Hour)
	step("wall clock an hour back", c.next())
	c.observe(last + 1000)
	step("after a version seen from another node", c.next())
	if c.current() != last {
		t.Fatalf("current %#x, last issued %#x", c.current(), last)
	}
	now = now.Add(2 * time.Hour)
	restarted := &clock{now: func() time.Time { return now }}
	step("restarted later", restarted.next())
}

// EachVersion walks exactly the entries FullState and KVState copy: the
// gossip layer's digest of them must agree with what push/pull and the
// repair exchange send.
func TestEachVersionMatchesFullState(t *testing.T) {
	r := rtNew(t, t.TempDir())
	if err := r.RegisterService(Service{ID: "web1", Name: "web", Port: 80}, nil, SourceAPI); err != nil {
		t.Fatal(err)
	}
	r.SetMemberStatus("n2", "10.0.0.2", MemberAlive)
	r.SetMemberStatus("n3", "10.0.0.3", MemberLeft) // not in FullState
	v := uint64(time.Now().UnixMilli()) << 16
	r.Merge([]Entry{
		{Node: "n2", Kind: KindService, Key: "db1", Version: v, Service: &Service{ID: "db1", Name: "db", Port: 5432}},
		{Node: "n2", Kind: KindService, Key: "old", Version: v + 1, Deleted: true},
	})
	r.KVPut("a", []byte("1"), 0, nil)
	r.KVPut("b", []byte("2"), 0, nil)
	r.KVDelete("b", false, nil)
	type stamp struct {
		owner, node string
		kind        EntryKind
		key         string
		version     uint64
		deleted     bool
	}
	var want, got []stamp
	var wantOwners, gotOwners []string
	for _, st := range r.FullState() {
		wantOwners = append(wantOwners, st.Node)
		for _, e := range st.Entries {
			want = append(want, stamp{st.Node, e.Node, e.Kind, e.Key, e.Version, e.Deleted})
		}
	}
	for _, e := range r.KVState() {
		want = append(want, stamp{"", e.Node, e.Kind, e.Key, e.Version, e.Deleted})
	}
	r.EachVersion(func(n string) { gotOwners = append(gotOwners, n) }, func(o string, e Entry) {
		got = append(got, stamp{o, e.Node, e.Kind, e.Key, e.Version, e.Deleted})
	})
	cmp := func(a, b stamp) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	}
	slices.SortFunc(want, cmp)
	slices.SortFunc(got, cmp)
	slices.Sort(wantOwners)
	slices.Sort(gotOwners)
	if !slices.Equal(want, got) || !slices.Equal(wantOwners, gotOwners) {
		t.Errorf("EachVersion walked owners %v, entries\n%v\nFullState and KVState hold owners %v, entries\n%v", gotOwners, got, wantOwners, want)
	}
	if len(wantOwners) != 2 || len(want) < 6 {
		t.Errorf("the test's state is not what it meant to build: owners %v, %d entries", wantOwners, len(want))
	}
}
