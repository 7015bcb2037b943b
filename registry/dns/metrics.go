package dns

import (
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of answer, the kind label of pier_dns_requests_total.
const (
	kindOther     uint8 = iota // errors (FORMERR, REFUSED...), the domain itself, unknown forms
	kindService                // [tag.]name.service and _name._tag.service
	kindNode                   // name.node and hex.addr
	kindForwarded              // asked of the recursors
	kindCache                  // a forwarded name answered from the cache
	nKinds
)

// The label values, indexed as the slots below. A query type or rcode not
// listed is counted as "other", so the number of series stays bounded
// whatever clients send.
var (
	kindNames  = [nKinds]string{"other", "service", "node", "forwarded", "cache"}
	typeNames  = [...]string{"other", "A", "AAAA", "SRV", "PTR", "TXT", "CNAME", "MX", "NS", "SOA", "ANY", "HTTPS"}
	rcodeNames = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other"}
)

func typeSlot(t uint16) int {
	switch t {
	case mdns.TypeA:
		return 1
	case mdns.TypeAAAA:
		return 2
	case mdns.TypeSRV:
		return 3
	case mdns.TypePTR:
		return 4
	case mdns.TypeTXT:
		return 5
	case mdns.TypeCNAME:
		return 6
	case mdns.TypeMX:
		return 7
	case mdns.TypeNS:
		return 8
	case mdns.TypeSOA:
		return 9
	case mdns.TypeANY:
		return 10
	case mdns.TypeHTTPS:
		return 11
	}
	return 0
}

func rcodeSlot(rcode int) int {
	switch rcode {
	case mdns.RcodeSuccess, mdns.RcodeFormatError, mdns.RcodeServerFailure, mdns.RcodeNameError, mdns.RcodeNotImplemented, mdns.RcodeRefused:
		return rcode
	case mdns.RcodeBadVers:
		return 6
	}
	return 7
}

// dnsMetrics are the server's metrics. Each (kind, type, rcode) counter is
// looked up once, the first time it is needed, and kept in a fixed array:
// counting a query is an atomic load and an atomic add, no allocation.
type dnsMetrics struct {
	requests *prometheus.CounterVec
	duration [nKinds]prometheus.Observer
	counters [nKinds][len(typeNames)][len(rcodeNames)]atomic.Pointer[prometheus.Counter]
	hits     prometheus.Counter
	misses   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Server) (*dnsMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &dnsMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "dns", Name: "requests_total",
			Help: "DNS queries answered, by query type, response code and kind (service, node, forwarded, cache, other).",
		}, []string{"type", "rcode", "kind"}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "dns", Name: "cache_hits_total",
			Help: "Names outside the domain answered from the forwarding cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "dns", Name: "cache_misses_total",
			Help: "Names outside the domain not in the forwarding cache, so asked of the recursors.",
		}),
	}
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "pier", Subsystem: "dns", Name: "request_duration_seconds",
		Help:    "Time from reading a query to its reply, by kind; forwarded queries include the recursors' time.",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"kind"})
	for k := range m.duration {
		m.duration[k] = dur.WithLabelValues(kindNames[k])
	}
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "pier", Subsystem: "dns", Name: "cache_size",
		Help: "Forwarded answers in the cache.",
	}, func() float64 { return float64(s.cache.Len()) })
	for _, c := range []prometheus.Collector{m.requests, dur, m.hits, m.misses, size} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// done counts the reply resp to q, which arrived at start.
func (m *dnsMetrics) done(q *query, resp []byte, start time.Time) {
	if m == nil || len(resp) < 4 {
		return
	}
	kind := q.kind
	rcode := int(resp[3] & 0xf)
	if q.domOff == domBadVers {
		rcode = mdns.RcodeBadVers
	}
	t, r := typeSlot(q.qtype), rcodeSlot(rcode)
	p := &m.counters[kind][t][r]
	c := p.Load()
	if c == nil {
		cc := m.requests.WithLabelValues(typeNames[t], rcodeNames[r], kindNames[kind])
		c = &cc
		p.Store(c)
	}
	(*c).Inc()
	m.duration[kind].Observe(time.Since(start).Seconds())
}

func (m *dnsMetrics) cacheHit() {
	if m != nil {
		m.hits.Inc()
	}
}

func (m *dnsMetrics) cacheMiss() {
	if m != nil {
		m.misses.Inc()
	}
}
