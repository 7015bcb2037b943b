package dns

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/deploy/eventually"
)

// fakeUpstream answers example.org A with TTL 60, gone.example.org with
// NXDOMAIN (SOA minimum 30), empty.example.org with no records (SOA TTL 20),
// big.example.org with 100 A records (too many for 1232 bytes), and nothing else with SERVFAIL.
func fakeUpstream(t *testing.T) *upstream {
	return startUpstream(t, func(q mdns.Question) *mdns.Msg {
		m := new(mdns.Msg)
		soa := func(ttl, minttl uint32) mdns.RR {
			return rr(t, "example.org. "+itoa(int(ttl))+" IN SOA ns.example.org. h.example.org. 1 7200 900 1209600 "+itoa(int(minttl)))
		}
		switch strings.ToLower(q.Name) {
		case "example.org.":
			m.Answer = []mdns.RR{rr(t, "example.org. 60 IN A 192.0.2.1")}
		case "gone.example.org.":
			m.Rcode = mdns.RcodeNameError
			m.Ns = []mdns.RR{soa(3600, 30)}
		case "empty.example.org.":
			m.Ns = []mdns.RR{soa(20, 300)}
		case "nosoa.example.org.":
			m.Rcode = mdns.RcodeNameError
		case "big.example.org.":
			for i := range 100 {
				m.Answer = append(m.Answer, rr(t, "big.example.org. 300 IN A 198.51.100."+itoa(i+1)))
			}
		default:
			m.Rcode = mdns.RcodeServerFailure
		}
		return m
	})
}

func TestForwardAndCache(t *testing.T) {
	up := fakeUpstream(t)
	clk := newClock()
	s := start(t, newRegistry(t), func(c *Config) {
		c.Recursors = []string{up.addr}
		c.Now = clk.Now
	})
	for i, network := range []string{"udp", "tcp", "udp"} {
		r := ask(t, s.addr, network, "Example.ORG.", mdns.TypeA, 0)
		if r.Rcode != 0 || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "192.0.2.1" || !r.RecursionAvailable || r.Authoritative {
			t.Fatalf("query %d over %s: %v", i, network, r)
		}
		if r.Question[0].Name != "Example.ORG." || r.Answer[0].Header().Name != "Example.ORG." {
			t.Errorf("the question's case is not kept: %v", r)
		}
		if ttl := r.Answer[0].Header().Ttl; ttl != 60 {
			t.Errorf("TTL %d before the clock moved", ttl)
		}
	}
	if n := up.queries.Load(); n != 1 {
		t.Fatalf("upstream saw %d queries, want 1 (then cache hits)", n)
	}
	clk.Advance(25 * time.Second)
	if r := ask(t, s.addr, "udp", "example.org.", mdns.TypeA, 1232); r.Answer[0].Header().Ttl != 35 || r.IsEdns0() == nil {
		t.Errorf("after 25s: %v, want TTL 35 and an OPT", r)
	}
	clk.Advance(35 * time.Second)
	ask(t, s.addr, "udp", "example.org.", mdns.TypeA, 0)
	if n := up.queries.Load(); n != 2 {
		t.Errorf("after the TTL ran out the upstream saw %d queries, want 2", n)
	}
}

func TestNegativeCache(t *testing.T) {
	up := fakeUpstream(t)
	clk := newClock()
	s := start(t, newRegistry(t), func(c *Config) {
		c.Recursors = []string{up.addr}
		c.Now = clk.Now
	})
	for _, c := range []struct {
		name  string
		rcode int
		keep  time.Duration // RFC 2308: min(SOA TTL, SOA MINIMUM)
	}{
		{"gone.example.org.", mdns.RcodeNameError, 30 * time.Second},
		{"empty.example.org.", mdns.RcodeSuccess, 20 * time.Second},
		{"nosoa.example.org.", mdns.RcodeNameError, 0}, // no SOA: not kept
	} {
		before := up.queries.Load()
		for range 3 {
			r := ask(t, s.addr, "udp", c.name, mdns.TypeA, 0)
			if r.Rcode != c.rcode || len(r.Answer) != 0 {
				t.Fatalf("%s: %v", c.name, r)
			}
		}
		want := int32(1)
		if c.keep == 0 {
			want = 3
		}
		if n := up.queries.Load() - before; n != want {
			t.Errorf("%s: upstream saw %d queries, want %d", c.name, n, want)
		}
		if c.keep > 0 {
			clk.Advance(c.keep)
			ask(t, s.addr, "udp", c.name, mdns.TypeA, 0)
			if n := up.queries.Load() - before; n != 2 {
				t.Errorf("%s: after %v the upstream saw %d queries, want 2", c.name, c.keep, n)
			}
		}
	}
}

func TestForwardTruncates(t *testing.T) {
	up := fakeUpstream(t)
	s := start(t, newRegistry(t), func(c *Config) { c.Recursors = []string{up.addr} })
	// The upstream's answer is larger than 512: the client gets TC, and
	// all of it over TCP. The upstream itself is asked over TCP once its
	// UDP answer comes back truncated.
	r := ask(t, s.addr, "udp", "big.example.org.", mdns.TypeA, 0)
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Errorf("UDP without EDNS: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
	r = ask(t, s.addr, "tcp", "big.example.org.", mdns.TypeA, 0)
	if r.Truncated || len(r.Answer) != 100 {
		t.Errorf("TCP: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
	up.mu.Lock()
	if strings.Join(up.seen, ",") != "udp big.example.org.,tcp big.example.org." {
		t.Errorf("the upstream saw %q, want UDP then TCP once", up.seen)
	}
	up.mu.Unlock()
	// From the cache too.
	r = ask(t, s.addr, "udp", "big.example.org.", mdns.TypeA, 0)
	if !r.Truncated || len(r.Answer) >= 100 {
		t.Errorf("UDP from the cache: TC %v, %d answers", r.Truncated, len(r.Answer))
	}
	// With EDNS the reply grows to pier's own payload size (1232), not to
	// the 4096 the client advertises (amplification_test.go): more answers
	// than in 512 bytes, but not all, and TC.
	small := len(r.Answer)
	r = ask(t, s.addr, "udp", "big.example.org.", mdns.TypeA, 4096)
	if !r.Truncated || len(r.Answer) >= 100 || len(r.Answer) <= small {
		t.Errorf("UDP with EDNS 4096: TC %v, %d answers (%d without EDNS)", r.Truncated, len(r.Answer), small)
	}
}

// deadAddr is a loopback UDP port with nothing behind it: a query there is
// refused at once (ICMP port unreachable).
func deadAddr(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := pc.LocalAddr().String()
	pc.Close()
	return a
}

func TestServfail(t *testing.T) {
	up := fakeUpstream(t)
	// Every recursor down: SERVFAIL, quickly.
	s := start(t, newRegistry(t), func(c *Config) {
		c.Recursors = []string{deadAddr(t), deadAddr(t)}
		c.RecursorTimeout = 5 * time.Second
	})
	t0 := time.Now()
	if r := ask(t, s.addr, "udp", "example.org.", mdns.TypeA, 0); r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("all recursors down: %s", mdns.RcodeToString[r.Rcode])
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Errorf("SERVFAIL took %v", d)
	}
	// The first recursor down, the second answers.
	s2 := start(t, newRegistry(t), func(c *Config) { c.Recursors = []string{deadAddr(t), up.addr} })
	if r := ask(t, s2.addr, "udp", "example.org.", mdns.TypeA, 0); r.Rcode != 0 || len(r.Answer) != 1 {
		t.Errorf("second recursor: %v", r)
	}
	// An upstream SERVFAIL is passed on, and not cached.
	for range 2 {
		if r := ask(t, s2.addr, "udp", "fail.example.org.", mdns.TypeA, 0); r.Rcode != mdns.RcodeServerFailure {
			t.Errorf("upstream SERVFAIL: %s", mdns.RcodeToString[r.Rcode])
		}
	}
	if n := up.queries.Load(); n != 3 {
		t.Errorf("upstream saw %d queries, want 3 (SERVFAIL is not cached)", n)
	}
}

func TestNoRecursors(t *testing.T) {
	s := start(t, newRegistry(t), nil)
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, s.addr, network, "example.org.", mdns.TypeA, 0)
		if r.Rcode != mdns.RcodeRefused || r.RecursionAvailable {
			t.Errorf("%s without recursors: %s RA %v", network, mdns.RcodeToString[r.Rcode], r.RecursionAvailable)
		}
		// The catalog still answers.
		if r := ask(t, s.addr, network, "consul.service.consul.", mdns.TypeA, 0); r.Rcode != 0 || len(r.Answer) != 1 {
			t.Errorf("%s catalog without recursors: %v", network, r)
		}
	}
}

// TestRecursionACL checks the access rule directly; TestRecursionFromNetns
// sends real packets from another address.
func TestRecursionACL(t *testing.T) {
	up := fakeUpstream(t)
	s := start(t, newRegistry(t), func(c *Config) {
		c.Recursors = []string{up.addr}
		c.AllowRecursion = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
	})
	m := new(mdns.Msg)
	m.SetQuestion("example.org.", mdns.TypeA)
	pkt, _ := m.Pack()
	for src, want := range map[string]bool{"127.0.0.1": true, "::1": true, "10.1.2.3": true, "10.2.0.1": false, "192.0.2.7": false} {
		var keybuf [keyCap]byte
		var q query
		if !parseQuery(pkt, &keybuf, s.domain, &q) {
			t.Fatal("the fast path did not take a plain query")
		}
		resp, done := s.reply(nil, &q, netip.MustParseAddr(src), false)
		if done {
			r := new(mdns.Msg)
			if err := r.Unpack(resp); err != nil {
				t.Fatal(err)
			}
			if want || r.Rcode != mdns.RcodeRefused || r.RecursionAvailable {
				t.Errorf("from %s: %s RA %v", src, mdns.RcodeToString[r.Rcode], r.RecursionAvailable)
			}
		} else if !want {
			t.Errorf("from %s: forwarded", src)
		}
	}
}

func TestResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/resolv.conf"
	writeFile(t, path, "# comment\nsearch example.org\nnameserver 127.0.0.1\nnameserver 10.0.0.2\nnameserver ::1\nnameserver fe80::1%eth0\noptions ndots:2\n")
	got, err := readResolvConf(path, []string{"127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "10.0.0.2:53 [::1]:53 [fe80::1]:53" {
		t.Errorf("pier on 127.0.0.1:53: %q", got)
	}
	got, _ = readResolvConf(path, []string{"0.0.0.0:53"})
	if strings.Join(got, " ") != "10.0.0.2:53 [fe80::1]:53" {
		t.Errorf("pier on 0.0.0.0:53: %q", got)
	}
	got, _ = readResolvConf(path, []string{"127.0.0.1:8600"})
	if len(got) != 4 {
		t.Errorf("pier on 8600: %q", got)
	}
	if got, err := readResolvConf(dir+"/missing", nil); err != nil || got != nil {
		t.Errorf("missing file: %q %v", got, err)
	}
	// New reads it when no recursor is given, and explicit ones win.
	cfg := DefaultConfig()
	cfg.Registry = newRegistry(t)
	cfg.ResolvConf = path
	s, err := New(cfg)
	if err != nil || len(s.Recursors()) != 4 {
		t.Errorf("New with resolv.conf: %v %v", s.Recursors(), err)
	}
	cfg.Recursors = []string{"192.0.2.53", "192.0.2.54:5353"}
	s, err = New(cfg)
	if err != nil || strings.Join(s.Recursors(), " ") != "192.0.2.53:53 192.0.2.54:5353" {
		t.Errorf("New with recursors: %v %v", s.Recursors(), err)
	}
}

// TestForwardOnce: clients asking the same question while it is on its way
// upstream wait for that one answer; the upstream is asked once.
func TestForwardOnce(t *testing.T) {
	gate := make(chan struct{})
	up := startUpstream(t, func(q mdns.Question) *mdns.Msg {
		<-gate
		m := new(mdns.Msg)
		m.Answer = []mdns.RR{rr(t, "slow.example.org. 60 IN A 192.0.2.5")}
		return m
	})
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	t.Cleanup(release) // before the upstream's cleanup, which waits for its handlers
	s := start(t, newRegistry(t), func(c *Config) {
		c.Recursors = []string{up.addr}
		c.RecursorTimeout = time.Minute // the gate, not a timeout, decides when the answer comes
	})

	const n = 10
	errs := make(chan error, n)
	for range n {
		go func() {
			m := new(mdns.Msg)
			m.SetQuestion("slow.example.org.", mdns.TypeA)
			r, err := exchange(s.addr, "udp", m)
			if err == nil && (len(r.Answer) != 1 || r.Rcode != 0) {
				err = fmt.Errorf("reply %v", r)
			}
			errs <- err
		}()
	}
	// Every query is being forwarded (each holds a token) and the upstream
	// has its one question: only then let it answer.
	eventually.NoError(t, 20*time.Second, "every query in flight and one at the upstream", func() error {
		if len(s.inflight) < n || up.queries.Load() < 1 {
			return fmt.Errorf("%d queries in flight, upstream saw %d", len(s.inflight), up.queries.Load())
		}
		return nil
	})
	release()
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got := up.queries.Load(); got != 1 {
		t.Errorf("the upstream was asked %d times, want once", got)
	}
}
