package dns

import (
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// catalog registers the seed's redis1 plus a few services that exercise
// every answer shape.
func catalog(t testing.TB) *registry.Registry {
	reg := newRegistry(t)
	register(t, reg, registry.Service{ID: "redis1", Name: "redis", Tags: []string{"master", "v1"}, Address: "172.16.0.2", Port: 8000})
	register(t, reg, registry.Service{ID: "redis2", Name: "redis", Tags: []string{"replica"}, Port: 8001}) // the node's address
	register(t, reg, registry.Service{ID: "v6", Name: "six", Address: "2001:db8::1", Port: 80})
	register(t, reg, registry.Service{ID: "ext", Name: "external", Address: "db.example.com", Port: 5432})
	register(t, reg, registry.Service{ID: "Web-1", Name: "Web", Port: 80, Weights: registry.Weights{Passing: 10, Warning: 1}})
	return reg
}

func TestCatalogNames(t *testing.T) {
	s := start(t, catalog(t), nil)
	cases := []struct {
		name  string
		qtype uint16
		rcode int
		want  []string // sorted
	}{
		{"redis.service.consul.", mdns.TypeA, 0, []string{"A 127.0.0.1", "A 172.16.0.2"}},
		{"consul.service.consul.", mdns.TypeA, 0, []string{"A 127.0.0.1"}},
		{"helloworld.node.consul.", mdns.TypeA, 0, []string{"A 127.0.0.1"}},
		{"helloworld.node.dc1.consul.", mdns.TypeA, 0, []string{"A 127.0.0.1"}},
		{"HelloWorld.NODE.Consul.", mdns.TypeA, 0, []string{"A 127.0.0.1"}},
		{"redis.service.dc1.consul.", mdns.TypeA, 0, []string{"A 127.0.0.1", "A 172.16.0.2"}},
		{"master.redis.service.consul.", mdns.TypeA, 0, []string{"A 172.16.0.2"}},
		{"MASTER.Redis.service.consul.", mdns.TypeA, 0, []string{"A 172.16.0.2"}},
		{"replica.redis.service.consul.", mdns.TypeA, 0, []string{"A 127.0.0.1"}},
		{"nope.redis.service.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"_redis._tcp.service.consul.", mdns.TypeSRV, 0, []string{"SRV ac100002.addr.dc1.consul. 8000 1", "SRV helloworld.node.dc1.consul. 8001 1"}},
		{"_redis._master.service.consul.", mdns.TypeSRV, 0, []string{"SRV ac100002.addr.dc1.consul. 8000 1"}},
		{"redis.service.consul.", mdns.TypeSRV, 0, []string{"SRV ac100002.addr.dc1.consul. 8000 1", "SRV helloworld.node.dc1.consul. 8001 1"}},
		{"web.service.consul.", mdns.TypeSRV, 0, []string{"SRV helloworld.node.dc1.consul. 80 10"}},
		{"six.service.consul.", mdns.TypeAAAA, 0, []string{"AAAA 2001:db8::1"}},
		{"six.service.consul.", mdns.TypeA, 0, []string{}}, // NODATA
		{"external.service.consul.", mdns.TypeA, 0, []string{"CNAME db.example.com."}},
		{"7f000001.addr.consul.", mdns.TypeA, 0, []string{"A 127.0.0.1"}},
		{"20010db8000000000000000000000001.addr.dc1.consul.", mdns.TypeAAAA, 0, []string{"AAAA 2001:db8::1"}},
		{"zz.addr.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"redis.service.consul.", mdns.TypeTXT, 0, []string{}},
		{"redis.service.consul.", 65000, 0, []string{}}, // an unknown type: NODATA
		{"redis.service.consul.", mdns.TypeANY, 0, []string{"A 127.0.0.1", "A 172.16.0.2"}},
		{"nothere.service.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"nobody.node.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"redis.service.dc2.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"a.b.c.service.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"whatever.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"service.consul.", mdns.TypeA, mdns.RcodeNameError, []string{}},
		{"consul.", mdns.TypeSOA, 0, []string{"SOA consul."}},
		{"consul.", mdns.TypeA, 0, []string{}},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, c := range cases {
			r := ask(t, s.addr, network, c.name, c.qtype, 1232)
			got := answers(r.Answer)
			slices.Sort(got)
			if got == nil {
				got = []string{}
			}
			if r.Rcode != c.rcode || !slices.Equal(got, c.want) || !r.Authoritative || r.Question[0].Name != c.name {
				t.Errorf("%s %s %s: rcode %s aa %v q %s, answers %q; want %s %q",
					network, c.name, mdns.TypeToString[c.qtype], mdns.RcodeToString[r.Rcode], r.Authoritative, r.Question[0].Name, got,
					mdns.RcodeToString[c.rcode], c.want)
			}
			if len(r.Answer) == 0 && c.qtype != mdns.TypeSOA {
				if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != mdns.TypeSOA || r.Ns[0].Header().Name != "consul." {
					t.Errorf("%s %s: a negative answer without the SOA: %v", network, c.name, r.Ns)
				}
			}
		}
	}
}

func TestSRVAdditional(t *testing.T) {
	s := start(t, catalog(t), nil)
	r := ask(t, s.addr, "udp", "_redis._tcp.service.consul.", mdns.TypeSRV, 0)
	extra := answers(r.Extra)
	slices.Sort(extra)
	if !slices.Equal(extra, []string{"A 127.0.0.1", "A 172.16.0.2"}) {
		t.Fatalf("additional section %q", extra)
	}
	for _, rr := range r.Extra {
		if n := rr.Header().Name; n != "helloworld.node.dc1.consul." && n != "ac100002.addr.dc1.consul." {
			t.Errorf("additional record %s names no SRV target", rr)
		}
	}
	// The SRV target of redis1 is the addr name of its IP.
	r = ask(t, s.addr, "udp", "master.redis.service.consul.", mdns.TypeSRV, 0)
	if srv, ok := r.Answer[0].(*mdns.SRV); !ok || srv.Target != "ac100002.addr.dc1.consul." {
		t.Errorf("SRV %v", r.Answer)
	}
}

func TestHealthFiltering(t *testing.T) {
	reg := newRegistry(t)
	check := func(id string, st registry.Status) registry.Check {
		return registry.Check{CheckID: id, Name: id, Status: st, Definition: registry.CheckDefinition{TTL: registry.Duration(time.Minute)}}
	}
	register(t, reg, registry.Service{ID: "a", Name: "api", Address: "10.0.0.1", Port: 1}, check("ca", registry.StatusPassing))
	register(t, reg, registry.Service{ID: "b", Name: "api", Address: "10.0.0.2", Port: 1}, check("cb", registry.StatusWarning))
	register(t, reg, registry.Service{ID: "c", Name: "api", Address: "10.0.0.3", Port: 1}, check("cc", registry.StatusCritical))
	register(t, reg, registry.Service{ID: "d", Name: "down", Address: "10.0.0.4", Port: 1}, check("cd", registry.StatusCritical))

	s := start(t, reg, nil)
	strict := start(t, reg, func(c *Config) { c.OnlyPassing = true })
	got := func(s *testServer, name string) (int, []string) {
		r := ask(t, s.addr, "udp", name, mdns.TypeA, 1232)
		a := answers(r.Answer)
		slices.Sort(a)
		return r.Rcode, a
	}
	if _, a := got(s, "api.service.consul."); !slices.Equal(a, []string{"A 10.0.0.1", "A 10.0.0.2"}) {
		t.Errorf("default: %q (critical left out, warning kept)", a)
	}
	if _, a := got(strict, "api.service.consul."); !slices.Equal(a, []string{"A 10.0.0.1"}) {
		t.Errorf("only_passing: %q", a)
	}
	if rc, _ := got(s, "down.service.consul."); rc != mdns.RcodeNameError {
		t.Errorf("a service with no healthy instance: %s, want NXDOMAIN", mdns.RcodeToString[rc])
	}

	// The next snapshot is answered at once: a check turning critical
	// leaves the answer, one turning passing joins it.
	if err := reg.UpdateCheck("ca", registry.StatusCritical, "down"); err != nil {
		t.Fatal(err)
	}
	if err := reg.UpdateCheck("cc", registry.StatusPassing, "up"); err != nil {
		t.Fatal(err)
	}
	if _, a := got(s, "api.service.consul."); !slices.Equal(a, []string{"A 10.0.0.2", "A 10.0.0.3"}) {
		t.Errorf("after the checks changed: %q", a)
	}
	// SRV weights follow the status: warning instances get Weights.Warning.
	r := ask(t, s.addr, "udp", "api.service.consul.", mdns.TypeSRV, 1232)
	for _, rr := range r.Answer {
		srv := rr.(*mdns.SRV)
		if srv.Weight != 1 {
			t.Errorf("SRV weight %d", srv.Weight)
		}
	}
}

func TestCatalogChangesAreSeen(t *testing.T) {
	reg := newRegistry(t)
	s := start(t, reg, nil)
	if r := ask(t, s.addr, "udp", "late.service.consul.", mdns.TypeA, 0); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("before registering: %s", mdns.RcodeToString[r.Rcode])
	}
	register(t, reg, registry.Service{ID: "late", Name: "late", Address: "10.1.1.1", Port: 1})
	if r := ask(t, s.addr, "udp", "late.service.consul.", mdns.TypeA, 0); r.Rcode != 0 || len(r.Answer) != 1 {
		t.Fatalf("after registering: %v", r)
	}
	if err := reg.DeregisterService("late"); err != nil {
		t.Fatal(err)
	}
	if r := ask(t, s.addr, "udp", "late.service.consul.", mdns.TypeA, 0); r.Rcode != mdns.RcodeNameError {
		t.Fatalf("after deregistering: %v", r)
	}
}

func TestTTLs(t *testing.T) {
	reg := catalog(t)
	s := start(t, reg, func(c *Config) {
		c.NodeTTL = 10 * time.Second
		c.ServiceTTL = map[string]time.Duration{"*": 5 * time.Second, "web": time.Second, "red*": 7 * time.Second}
	})
	for name, want := range map[string]uint32{
		"redis.service.consul.":   7,
		"web.service.consul.":     1,
		"consul.service.consul.":  5,
		"helloworld.node.consul.": 10,
	} {
		r := ask(t, s.addr, "udp", name, mdns.TypeA, 0)
		if len(r.Answer) == 0 || r.Answer[0].Header().Ttl != want {
			t.Errorf("%s: %v, want TTL %d", name, r.Answer, want)
		}
	}
	// Default TTL 0, as Consul.
	d := start(t, reg, nil)
	if r := ask(t, d.addr, "udp", "redis.service.consul.", mdns.TypeA, 0); r.Answer[0].Header().Ttl != 0 {
		t.Errorf("default TTL %d", r.Answer[0].Header().Ttl)
	}
}

func TestCustomDomain(t *testing.T) {
	s := start(t, catalog(t), func(c *Config) { c.Domain = "Pier.Internal" })
	r := ask(t, s.addr, "udp", "redis.service.pier.internal.", mdns.TypeA, 0)
	if r.Rcode != 0 || len(r.Answer) != 2 {
		t.Errorf("custom domain: %v", r)
	}
	// consul. is then an ordinary name: no recursors here, so REFUSED.
	if r := ask(t, s.addr, "udp", "redis.service.consul.", mdns.TypeA, 0); r.Rcode != mdns.RcodeRefused {
		t.Errorf("the old domain: %s", mdns.RcodeToString[r.Rcode])
	}
}

func TestTruncation(t *testing.T) {
	reg := newRegistry(t)
	for i := range 40 {
		register(t, reg, registry.Service{ID: "big" + itoa(i), Name: "big", Address: "10.9.0." + itoa(i+1), Port: 1000 + i})
	}
	s := start(t, reg, nil)
	cases := []struct {
		network string
		edns    uint16
		min     int
		max     int
		tc      bool
	}{
		{"udp", 0, 3, 3, true},       // no EDNS: UDPAnswerLimit answers, TC
		{"udp", 512, 1, 39, true},    // EDNS 512: trimmed to fit
		{"udp", 4096, 40, 40, false}, // EDNS 4096: up to pier's own 1232 bytes
		{"tcp", 0, 40, 40, false},
	}
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeSRV} {
		for _, c := range cases {
			if qt == mdns.TypeSRV && c.edns == 4096 {
				// 40 SRV records and their addresses need more than 1232
				// bytes, however much room the client offers.
				c.min, c.max, c.tc = 1, 39, true
			}
			m := new(mdns.Msg)
			m.SetQuestion("big.service.consul.", qt)
			if c.edns > 0 {
				m.SetEdns0(c.edns, false)
			}
			r, err := exchange(s.addr, c.network, m)
			if err != nil {
				t.Fatal(err)
			}
			r.Compress = true
			size := r.Len()
			limit := 512
			if c.edns > 0 {
				limit = min(int(c.edns), s.cfg.MaxUDPSize)
			}
			if c.network == "tcp" {
				limit = 65535
			}
			if len(r.Answer) < c.min || len(r.Answer) > c.max || r.Truncated != c.tc || size > limit {
				t.Errorf("%s %s edns %d: %d answers, TC %v, %d bytes; want %d-%d, TC %v, at most %d bytes",
					mdns.TypeToString[qt], c.network, c.edns, len(r.Answer), r.Truncated, size, c.min, c.max, c.tc, limit)
			}
			if (c.edns > 0) != (r.IsEdns0() != nil) {
				t.Errorf("%s edns %d: OPT in the reply %v", c.network, c.edns, r.IsEdns0())
			}
		}
	}
	// Silent trimming, as Consul's default, when asked.
	q := start(t, reg, func(c *Config) { c.EnableTruncate = false })
	if r := ask(t, q.addr, "udp", "big.service.consul.", mdns.TypeA, 0); len(r.Answer) != 3 || r.Truncated {
		t.Errorf("enable_truncate off: %d answers, TC %v", len(r.Answer), r.Truncated)
	}
}

func TestShuffle(t *testing.T) {
	reg := newRegistry(t)
	for i := range 5 {
		register(t, reg, registry.Service{ID: "s" + itoa(i), Name: "s", Address: "10.8.0." + itoa(i+1), Port: 1})
	}
	s := start(t, reg, nil)
	first := map[string]bool{}
	for range 200 {
		r := ask(t, s.addr, "udp", "s.service.consul.", mdns.TypeA, 0)
		first[r.Answer[0].(*mdns.A).A.String()] = true
		if len(first) == 5 {
			return
		}
	}
	t.Errorf("in 200 answers only %d addresses came first: %v", len(first), first)
}

func TestServiceTTLMatch(t *testing.T) {
	ttls := map[string]time.Duration{"*": 5 * time.Second, "web": time.Second, "api-*": 2 * time.Second, "api-v2*": 3 * time.Second}
	for name, want := range map[string]uint32{"web": 1, "WEB": 1, "api-v1": 2, "api-v2-x": 3, "db": 5, "webx": 5} {
		if got := serviceTTL(ttls, name); got != want {
			t.Errorf("serviceTTL(%q) = %d, want %d", name, got, want)
		}
	}
	if got := serviceTTL(nil, "x"); got != 0 {
		t.Errorf("no TTLs: %d", got)
	}
}

func TestNewValidates(t *testing.T) {
	reg := newRegistry(t)
	for _, c := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.Registry = nil }, "registry"},
		{func(c *Config) { c.Addrs = nil }, "listen address"},
		{func(c *Config) { c.Addrs = []string{"localhost:53"} }, "not an IP"},
		{func(c *Config) { c.Addrs = []string{"127.0.0.1:99999"} }, "bad port"},
		{func(c *Config) { c.Recursors = []string{"dns.google"} }, "recursor"},
		{func(c *Config) { c.Domain = "a..b" }, "domain"},
		{func(c *Config) { c.NodeTTL = -time.Second }, "negative"},
		{func(c *Config) { c.MaxUDPSize = 100 }, "payload"},
	} {
		cfg := DefaultConfig()
		cfg.Registry = reg
		cfg.ResolvConf = ""
		c.mutate(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "dns: ") {
			t.Errorf("New: %v, want an error about %q", err, c.want)
		}
	}
}
