package dns

import (
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

func queryPacket(tb testing.TB, name string, qtype uint16, edns bool) []byte {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(1232, false)
	}
	b, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// hot is the work readUDP does per query, without the socket.
func hot(s *Server, pkt []byte, out []byte, keybuf *[keyCap]byte) []byte {
	var q query
	if !parseQuery(pkt, keybuf, s.domain, &q) {
		panic("not the fast path")
	}
	b, done := s.reply(out, &q, netip.AddrFrom4([4]byte{127, 0, 0, 1}), false)
	if !done {
		panic("forwarded")
	}
	return b
}

// TestHotPathAllocs: answering a service lookup or a cached forwarded name
// allocates nothing once the answer is packed.
func TestHotPathAllocs(t *testing.T) {
	s := fuzzServer(t)
	out := make([]byte, 0, 4096)
	var keybuf [keyCap]byte
	for _, pkt := range [][]byte{
		queryPacket(t, "redis.service.consul.", mdns.TypeA, false),
		queryPacket(t, "Redis.Service.Consul.", mdns.TypeSRV, true),
		queryPacket(t, "example.org.", mdns.TypeA, true),
	} {
		for range 50 { // pack every rotation first
			hot(s, pkt, out, &keybuf)
		}
		if n := testing.AllocsPerRun(1000, func() { hot(s, pkt, out, &keybuf) }); n != 0 {
			t.Errorf("%d allocations per query % x", int(n), pkt[12:])
		}
	}
}

// The two benchmarks ask the same way (no EDNS, as dnsperf by default), so
// that their difference is the cache's against the catalog's.
func BenchmarkServiceA(b *testing.B) {
	benchHot(b, queryPacket(b, "redis.service.consul.", mdns.TypeA, false))
}

func BenchmarkForwardCached(b *testing.B) {
	benchHot(b, queryPacket(b, "example.org.", mdns.TypeA, false))
}

func benchHot(b *testing.B, pkt []byte) {
	s := fuzzServer(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]byte, 0, 4096)
		var keybuf [keyCap]byte
		for pb.Next() {
			hot(s, pkt, out, &keybuf)
		}
	})
}

// BenchmarkSnapshotChange: the first query after a catalog change computes
// the answer again.
func BenchmarkSnapshotChange(b *testing.B) {
	s := fuzzServer(b)
	pkt := queryPacket(b, "redis.service.consul.", mdns.TypeA, false)
	out := make([]byte, 0, 4096)
	var keybuf [keyCap]byte
	b.ReportAllocs()
	for b.Loop() {
		s.view.Store(nil) // as if the catalog had changed
		hot(s, pkt, out, &keybuf)
	}
}
