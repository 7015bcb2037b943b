package wan

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/coordinate"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

// fast makes the pool notice a failure in about a second.
func fast(mc *memberlist.Config) {
	mc.ProbeInterval, mc.ProbeTimeout, mc.SuspicionMult = 200*time.Millisecond, 100*time.Millisecond, 1
	mc.GossipInterval = 50 * time.Millisecond
}

type running struct {
	p    *Pool
	stop func()
}

func start(t *testing.T, node, dc string, port string) *running {
	t.Helper()
	return startKeyed(t, node, dc, port, nil)
}

func startKeyed(t *testing.T, node, dc string, port string, kr *memberlist.Keyring) *running {
	t.Helper()
	p, err := New(Config{NodeName: node, Datacenter: dc, BindAddr: "127.0.0.1", Tags: map[string]string{"role": "consul", "id": node, "port": port}, Keyring: kr,
		ReconnectEvery: 200 * time.Millisecond, CoordinatePeriod: 100 * time.Millisecond, LeaveTimeout: time.Second, Memberlist: fast})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	r := &running{p: p, stop: func() { cancel(); wg.Wait() }}
	t.Cleanup(r.stop)
	return r
}

func statusOf(p *Pool, name string) registry.MemberStatus {
	for _, m := range p.Members() {
		if m.Name == name {
			return m.Status
		}
	}
	return registry.MemberNone
}

func TestPoolJoinServersLeave(t *testing.T) {
	a := start(t, "s1", "dc1", "8300")
	b := start(t, "s2", "dc2", "9300")
	c := start(t, "s3", "dc2", "9301")
	if _, err := b.p.Join([]string{a.p.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.p.Join([]string{a.p.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "dc1 sees both servers of dc2", func() bool {
		return len(a.p.Servers("dc2")) == 2
	})
	if got := a.p.Datacenters(); !slices.Equal(got, []string{"dc1", "dc2"}) {
		t.Fatalf("datacenters from dc1: %v", got)
	}
	if got := b.p.Datacenters(); !slices.Equal(got, []string{"dc2", "dc1"}) {
		t.Fatalf("datacenters from dc2: %v, want its own first", got)
	}
	addrs := []string{}
	for _, s := range a.p.Servers("dc2") {
		addrs = append(addrs, s.Addr)
	}
	slices.Sort(addrs)
	if !slices.Equal(addrs, []string{"127.0.0.1:9300", "127.0.0.1:9301"}) {
		t.Fatalf("server ports of dc2: %v", addrs)
	}
	if statusOf(a.p, "s2.dc2") != registry.MemberAlive {
		t.Fatalf("members: %v", a.p.Members())
	}
	// A graceful leave is seen as left at once, and the server is no
	// longer one to forward to.
	if err := c.p.Leave(); err != nil {
		t.Fatal(err)
	}
	c.stop()
	eventually.True(t, 10*time.Second, "s3 left", func() bool { return statusOf(a.p, "s3.dc2") == registry.MemberLeft })
	if got := a.p.Servers("dc2"); len(got) != 1 || got[0].Name != "s2.dc2" {
		t.Fatalf("servers of dc2 after s3 left: %v", got)
	}
	// A server that stops without leaving is failed, and dc2 is still
	// listed (with no server to reach).
	b.stop()
	eventually.True(t, 10*time.Second, "s2 failed", func() bool { return statusOf(a.p, "s2.dc2") == registry.MemberFailed })
	if len(a.p.Servers("dc2")) != 0 || !slices.Equal(a.p.Datacenters(), []string{"dc1", "dc2"}) {
		t.Fatalf("after s2 failed: servers %v, datacenters %v", a.p.Servers("dc2"), a.p.Datacenters())
	}
}

func TestPoolCoordinatesFromPings(t *testing.T) {
	a := start(t, "s1", "dc1", "8300")
	b := start(t, "s2", "dc2", "9300")
	if _, err := b.p.Join([]string{a.p.Addr()}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "dc1 learns dc2's server's coordinate", func() bool {
		return len(a.p.DatacenterCoordinates()["dc2"]) == 1 && len(a.p.Servers("dc2")) == 1 && a.p.Servers("dc2")[0].RTT >= 0
	})
}

// TestNearestFirst orders datacenters by the median round trip to their
// servers, from coordinates set by hand (loopback has no distances).
func TestNearestFirst(t *testing.T) {
	at := func(x float64) *coordinate.Coordinate {
		c := coordinate.NewCoordinate(coordinate.DefaultConfig())
		c.Vec[0] = x
		return c
	}
	mine := at(0)
	servers := func(xs ...float64) []Server {
		var out []Server
		for _, x := range xs {
			out = append(out, Server{RTT: distance(mine, at(x))})
		}
		return out
	}
	far, near := median(servers(0.3, 0.3, 0.001)), median(servers(0.05, 0.06, 0.9))
	if !(near < far) {
		t.Fatalf("median of near dc %v, of far dc %v", near, far)
	}
	if got := median(servers()); got <= far {
		t.Fatalf("a datacenter without coordinates sorts last, got %v", got)
	}
}

// TestPoolEncrypted: the pool encrypts with the keyring it is handed (the
// LAN pool's), so servers with the same key meet, one with another key
// does not, and a key installed and used in that keyring afterwards is the
// pool's at once.
func TestPoolEncrypted(t *testing.T) {
	keyA, keyB := []byte("0123456789abcdef"), []byte("fedcba9876543210")
	ring := func(k []byte) *memberlist.Keyring {
		kr, err := memberlist.NewKeyring(nil, k)
		if err != nil {
			t.Fatal(err)
		}
		return kr
	}
	a := startKeyed(t, "s1", "dc1", "8300", ring(keyA))
	b := startKeyed(t, "s2", "dc2", "9300", ring(keyA))
	other := startKeyed(t, "s3", "dc3", "9400", ring(keyB))
	if _, err := b.p.Join([]string{a.p.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.p.Join([]string{a.p.Addr()}); err == nil {
		t.Error("a server with another key joined")
	}
	eventually.True(t, 10*time.Second, "the two with one key meet", func() bool { return len(a.p.Servers("dc2")) == 1 })
	if len(a.p.Servers("dc3")) != 0 {
		t.Error("dc3, of another key, is in the pool")
	}
	// Rotation through the shared keyrings: install B on both, use it,
	// remove A; the pool goes on, and dc3 (B only) can now join.
	for _, r := range []*running{a, b} {
		kr := r.p.cfg.Keyring
		if err := kr.AddKey(keyB); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*running{a, b} {
		kr := r.p.cfg.Keyring
		if err := kr.UseKey(keyB); err != nil {
			t.Fatal(err)
		}
		if err := kr.RemoveKey(keyA); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := other.p.Join([]string{a.p.Addr()}); err != nil {
		t.Fatalf("after the rotation to its key: %v", err)
	}
	eventually.True(t, 10*time.Second, "all three meet on the new key", func() bool {
		return len(a.p.Servers("dc2")) == 1 && len(a.p.Servers("dc3")) == 1 && len(b.p.Servers("dc3")) == 1
	})
}
