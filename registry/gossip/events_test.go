package gossip

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

func keptIDs(g *Gossip) []string {
	evs, _ := g.Events()
	var ids []string
	for _, e := range evs {
		ids = append(ids, e.ID)
	}
	return ids
}

func seenEvent(g *Gossip, id string) bool {
	g.ev.mu.Lock()
	defer g.ev.mu.Unlock()
	_, ok := g.ev.seen[id]
	return ok
}

// TestUserEventsSpread: an event fired on one node reaches every node once,
// and one with a service filter is kept only where such a service runs.
func TestUserEventsSpread(t *testing.T) {
	nodes := cluster(t, 3)
	if err := nodes[1].reg.RegisterService(registry.Service{ID: "web1", Name: "web", Tags: []string{"blue"}, Port: 80, Weights: registry.Weights{Passing: 1, Warning: 1}}, nil, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	all, err := nodes[0].g.FireEvent(UserEvent{Name: "deploy", Payload: []byte("v2")})
	if err != nil {
		t.Fatal(err)
	}
	if all.ID == "" || all.Version != 1 {
		t.Fatalf("fired %+v", all)
	}
	web, err := nodes[0].g.FireEvent(UserEvent{Name: "restart", ServiceFilter: "^web$", TagFilter: "blue"})
	if err != nil {
		t.Fatal(err)
	}
	if web.LTime <= all.LTime {
		t.Errorf("Lamport times %d then %d", all.LTime, web.LTime)
	}
	for i, n := range nodes {
		eventually.True(t, 30*time.Second, fmt.Sprintf("n%d hears both events", i), func() bool {
			return seenEvent(n.g, all.ID) && seenEvent(n.g, web.ID)
		})
		ids := keptIDs(n.g)
		want := []string{all.ID}
		if i == 1 {
			want = []string{all.ID, web.ID}
		}
		eventually.True(t, 30*time.Second, fmt.Sprintf("n%d keeps %v", i, want), func() bool {
			ids = keptIDs(n.g)
			slices.Sort(ids)
			slices.Sort(want)
			return slices.Equal(ids, want)
		})
		evs, _ := n.g.Events()
		for _, e := range evs {
			if e.ID == all.ID && (e.Name != "deploy" || !bytes.Equal(e.Payload, []byte("v2")) || e.LTime != all.LTime) {
				t.Errorf("n%d kept %+v", i, e)
			}
		}
	}
	// A filter on the node name.
	only2, err := nodes[0].g.FireEvent(UserEvent{Name: "x", NodeFilter: "^n2$"})
	if err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 30*time.Second, "n2 keeps its event", func() bool { return slices.Contains(keptIDs(nodes[2].g), only2.ID) })
	if slices.Contains(keptIDs(nodes[0].g), only2.ID) {
		t.Error("n0 kept an event for n2")
	}
}

// TestUserEventsKeepLast256: an agent keeps the last 256 events it took,
// oldest first, and an event it has seen is not taken twice.
func TestUserEventsKeepLast256(t *testing.T) {
	n := startNode(t, "solo", opts{})
	var fired []string
	for i := range 300 {
		e, err := n.g.FireEvent(UserEvent{Name: fmt.Sprint("e", i)})
		if err != nil {
			t.Fatal(err)
		}
		fired = append(fired, e.ID)
	}
	if got := keptIDs(n.g); !slices.Equal(got, fired[300-256:]) {
		t.Fatalf("kept %d events, not the last 256 in order", len(got))
	}
	_, ch := n.g.Events()
	msg, _ := encodeEvent(UserEvent{ID: fired[299], Name: "e299", Version: 1, LTime: 299})
	n.g.onEvent(msg) // a duplicate
	select {
	case <-ch:
		t.Error("a duplicate event was kept")
	default:
	}
	msg, _ = encodeEvent(UserEvent{ID: "00000000-0000-4000-8000-000000000001", Name: "remote", Version: 1, LTime: 1000})
	n.g.onEvent(msg)
	select {
	case <-ch:
	default:
		t.Error("a new event did not wake the watcher")
	}
	if e, _ := n.g.FireEvent(UserEvent{Name: "after"}); e.LTime <= 1000 {
		t.Errorf("the clock did not move past a witnessed time: %d", e.LTime)
	}
}

func TestUserEventRefused(t *testing.T) {
	n := startNode(t, "solo", opts{})
	for _, e := range []UserEvent{
		{},
		{Name: "x", TagFilter: "a"},
		{Name: "x", NodeFilter: "("},
		{Name: "x", ServiceFilter: "[a"},
		{Name: "x", Payload: make([]byte, MaxEventSize)},
	} {
		if _, err := n.g.FireEvent(e); err == nil {
			t.Errorf("%+v was fired", e)
		}
	}
	if ids := keptIDs(n.g); len(ids) != 0 {
		t.Errorf("kept %v", ids)
	}
}

// FuzzUserEvent: a user event from the network decodes or is refused, and
// one that decodes encodes back to the same event.
func FuzzUserEvent(f *testing.F) {
	b, _ := encodeEvent(UserEvent{ID: newEventID(), Name: "deploy", Payload: []byte{0, 1, 2}, NodeFilter: "n.*", ServiceFilter: "web", TagFilter: "v1", Version: 1, LTime: 42})
	f.Add(b)
	f.Add([]byte{msgEvent})
	f.Add([]byte(`E{"id":"x","n":"y","lt":18446744073709551615}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEvent(b)
		if err != nil {
			return
		}
		again, err := encodeEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		e2, err := decodeEvent(again)
		if err != nil || !equalEvents(e, e2) {
			t.Fatalf("%+v became %+v (%v)", e, e2, err)
		}
		n := &events{seen: map[string]uint64{}, changed: make(chan struct{})}
		n.witness(e.ID, e.LTime)
	})
}

func equalEvents(a, b UserEvent) bool {
	return a.ID == b.ID && a.Name == b.Name && bytes.Equal(a.Payload, b.Payload) && a.NodeFilter == b.NodeFilter &&
		a.ServiceFilter == b.ServiceFilter && a.TagFilter == b.TagFilter && a.Version == b.Version && a.LTime == b.LTime
}

// TestUserEventClockOnJoin: a node that starts from clock 0 learns the
// cluster's event clock by push/pull at its join, so the others do not take
// its first events for old ones.
func TestUserEventClockOnJoin(t *testing.T) {
	n0 := startNode(t, "n0", opts{})
	n0.g.ev.mu.Lock()
	n0.g.ev.clock = 3 * eventWindow
	n0.g.ev.mu.Unlock()
	n1 := startNode(t, "n1", opts{join: []string{n0.g.Addr()}})
	eventually.True(t, 30*time.Second, "n1 learns the clock", func() bool { return n1.g.ev.now() >= 3*eventWindow })
	e, err := n1.g.FireEvent(UserEvent{Name: "fresh"})
	if err != nil {
		t.Fatal(err)
	}
	if e.LTime < 3*eventWindow {
		t.Fatalf("the joined node fired at %d, before the cluster's clock", e.LTime)
	}
	eventually.True(t, 30*time.Second, "n0 keeps n1's event", func() bool { return slices.Contains(keptIDs(n0.g), e.ID) })
}
