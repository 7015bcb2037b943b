package dns

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/pier-dev/pier/registry"
)

// newRegistry is an in-memory catalog of node helloworld at 127.0.0.1 (with
// the agent's own service "consul").
func newRegistry(t testing.TB) *registry.Registry {
	t.Helper()
	cfg := registry.DefaultConfig()
	cfg.NodeName = "helloworld"
	cfg.Address = "127.0.0.1"
	reg, err := registry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func register(t testing.TB, reg *registry.Registry, s registry.Service, checks ...registry.Check) {
	t.Helper()
	if s.Weights == (registry.Weights{}) {
		s.Weights = registry.Weights{Passing: 1, Warning: 1}
	}
	if err := reg.RegisterService(s, checks, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
}

// testServer is a Server running on 127.0.0.1 port 0.
type testServer struct {
	*Server
	addr string
}

// start runs a Server on a free loopback port until the test ends, and
// waits until its sockets are open. Recursors come only from the test.
func start(t testing.TB, reg *registry.Registry, mutate func(*Config)) *testServer {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Registry = reg
	cfg.Addrs = []string{"127.0.0.1:0"}
	cfg.ResolvConf = ""
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Run did not return within 20s of its context ending")
		}
	})
	select {
	case <-s.Ready():
	case err := <-errc:
		t.Fatalf("Run: %v", err)
	}
	return &testServer{Server: s, addr: s.Addrs()[0].String()}
}

// TestMain fails the run if a goroutine outlives the tests: every Server
// has been stopped by then, and Run waits for every goroutine it starts, so
// none may be left.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ask sends one question with a miekg/dns client. edns 0 sends none.
func ask(t testing.TB, addr, network, name string, qtype uint16, edns uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	r, err := exchange(addr, network, m)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, mdns.TypeToString[qtype], network, err)
	}
	return r
}

func exchange(addr, network string, m *mdns.Msg) (*mdns.Msg, error) {
	c := &mdns.Client{Net: network, Timeout: 10 * time.Second, UDPSize: 65535}
	if opt := m.IsEdns0(); opt != nil {
		c.UDPSize = opt.UDPSize()
	}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// answers returns the answer section as "type value" strings.
func answers(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch v := rr.(type) {
		case *mdns.A:
			out = append(out, "A "+v.A.String())
		case *mdns.AAAA:
			out = append(out, "AAAA "+v.AAAA.String())
		case *mdns.CNAME:
			out = append(out, "CNAME "+v.Target)
		case *mdns.SRV:
			out = append(out, "SRV "+v.Target+" "+itoa(int(v.Port))+" "+itoa(int(v.Weight)))
		case *mdns.SOA:
			out = append(out, "SOA "+v.Hdr.Name)
		default:
			out = append(out, rr.String())
		}
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

// upstream is a tiny DNS server standing in for a recursor. Its handler
// answers each question; it counts the queries it sees.
type upstream struct {
	addr    string
	queries atomic.Int32
	mu      sync.Mutex
	seen    []string
}

func startUpstream(t testing.TB, answer func(q mdns.Question) *mdns.Msg) *upstream {
	t.Helper()
	u := &upstream{}
	// UDP and TCP on the same port: try free UDP ports until the TCP one
	// next to it is free too.
	var pc net.PacketConn
	var l net.Listener
	for try := 0; l == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if try == 50 {
				t.Fatalf("no port free for both UDP and TCP: %v", err)
			}
		}
	}
	u.addr = pc.LocalAddr().String()
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		u.queries.Add(1)
		u.mu.Lock()
		u.seen = append(u.seen, w.RemoteAddr().Network()+" "+r.Question[0].Name)
		u.mu.Unlock()
		m := answer(r.Question[0])
		if m == nil {
			return // a dead upstream: no answer
		}
		rcode := m.Rcode
		m.SetReply(r)
		m.Rcode = rcode
		m.Compress = true
		if w.RemoteAddr().Network() == "udp" {
			size := 512
			if opt := r.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			m.Truncate(size)
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { srv.ActivateAndServe(); close(done) }()
		<-started
		t.Cleanup(func() { srv.Shutdown(); <-done })
	}
	return u
}

func rr(t testing.TB, s string) mdns.RR {
	t.Helper()
	r, err := mdns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// clock is a settable clock for the forwarding cache.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
