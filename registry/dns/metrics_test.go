package dns

import (
	"net/netip"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	up := fakeUpstream(t)
	prom := prometheus.NewPedanticRegistry()
	reg := newRegistry(t)
	s := start(t, reg, func(c *Config) {
		c.Recursors = []string{up.addr}
		c.Registerer = prom
	})
	ask(t, s.addr, "udp", "helloworld.node.consul.", mdns.TypeA, 0)
	ask(t, s.addr, "tcp", "consul.service.consul.", mdns.TypeSRV, 0)
	ask(t, s.addr, "udp", "nope.service.consul.", mdns.TypeA, 0)
	ask(t, s.addr, "udp", "example.org.", mdns.TypeA, 0) // forwarded
	ask(t, s.addr, "udp", "example.org.", mdns.TypeA, 0) // from the cache
	ask(t, s.addr, "udp", "example.org.", mdns.TypeTLSA, 0)

	want := `
# HELP pier_dns_cache_hits_total Names outside the domain answered from the forwarding cache.
# TYPE pier_dns_cache_hits_total counter
pier_dns_cache_hits_total 1
# HELP pier_dns_cache_misses_total Names outside the domain not in the forwarding cache, so asked of the recursors.
# TYPE pier_dns_cache_misses_total counter
pier_dns_cache_misses_total 2
# HELP pier_dns_cache_size Forwarded answers in the cache.
# TYPE pier_dns_cache_size gauge
pier_dns_cache_size 2
# HELP pier_dns_requests_total DNS queries answered, by query type, response code and kind (service, node, forwarded, cache, other).
# TYPE pier_dns_requests_total counter
pier_dns_requests_total{kind="cache",rcode="NOERROR",type="A"} 1
pier_dns_requests_total{kind="forwarded",rcode="NOERROR",type="A"} 1
pier_dns_requests_total{kind="forwarded",rcode="NOERROR",type="other"} 1
pier_dns_requests_total{kind="node",rcode="NOERROR",type="A"} 1
pier_dns_requests_total{kind="service",rcode="NOERROR",type="SRV"} 1
pier_dns_requests_total{kind="service",rcode="NXDOMAIN",type="A"} 1
`
	if err := testutil.GatherAndCompare(prom, strings.NewReader(want),
		"pier_dns_requests_total", "pier_dns_cache_hits_total", "pier_dns_cache_misses_total", "pier_dns_cache_size"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(prom, "pier_dns_request_duration_seconds"); n != int(nKinds) {
		t.Errorf("%d duration series, want %d", n, nKinds)
	}
	if problems, err := testutil.GatherAndLint(prom); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

// TestMetricsHotPathAllocs: counting and timing a query allocates nothing
// once its counter exists.
func TestMetricsHotPathAllocs(t *testing.T) {
	s := fuzzServer(t)
	var err error
	if s.met, err = newMetrics(prometheus.NewRegistry(), s); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 0, 4096)
	var keybuf [keyCap]byte
	for _, pkt := range [][]byte{
		queryPacket(t, "redis.service.consul.", mdns.TypeA, false),
		queryPacket(t, "example.org.", mdns.TypeA, true),
	} {
		one := func() {
			var q query
			parseQuery(pkt, &keybuf, s.domain, &q)
			b, _ := s.reply(out, &q, netip.AddrFrom4([4]byte{127, 0, 0, 1}), false)
			s.met.done(&q, b, s.cfg.Now())
		}
		for range 50 {
			one()
		}
		if n := testing.AllocsPerRun(1000, one); n != 0 {
			t.Errorf("%v allocations per query with metrics", n)
		}
	}
}
