package dns

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fuzzServer is a Server that is never run: the fuzz targets call its
// query handling directly. It has no recursors, so nothing blocks; a
// forwarded answer sits in its cache for the cache path.
func fuzzServer(t testing.TB) *Server {
	cfg := DefaultConfig()
	cfg.Registry = catalog(t)
	cfg.ResolvConf = ""
	cfg.Recursors = []string{"192.0.2.1"} // never contacted: every name asked is cached or refused
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := new(mdns.Msg)
	r.SetQuestion("example.org.", mdns.TypeA)
	r.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: "example.org.", Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 300}, A: []byte{192, 0, 2, 9}}}
	e, err := newEntry(r, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var kb [keyCap]byte
	s.cache.put(string(keyFromName(&kb, []byte("\x07example\x03org\x00"), mdns.TypeA)), e)
	return s
}

// handle runs one packet through the UDP path as readUDP does and checks
// the reply. It reports whether the query would be forwarded.
func handle(t *testing.T, s *Server, pkt []byte, tcp bool) {
	var keybuf [keyCap]byte
	var namebuf [256]byte
	var q query
	fast := parseQuery(pkt, &keybuf, s.domain, &q)
	if fast {
		// The slow parser must read the same question.
		var kb2 [keyCap]byte
		var nb2 [256]byte
		q2, ok := s.parseSlow(pkt, &kb2, &nb2)
		if !ok || !bytes.Equal(q2.key, q.key) || q2.domOff != q.domOff || !bytes.Equal(q2.name, q.name) || q2.edns != q.edns || q2.size != q.size {
			t.Fatalf("fast and slow parsers disagree on % x:\nfast %+v\nslow %+v (%v)", pkt, q, q2, ok)
		}
	} else {
		var ok bool
		if q, ok = s.parseSlow(pkt, &keybuf, &namebuf); !ok {
			return
		}
	}
	resp, done := s.reply(nil, &q, netip.MustParseAddr("127.0.0.1"), tcp)
	if !done {
		if q.domOff != -1 || !s.mayRecurse(netip.MustParseAddr("127.0.0.1")) {
			t.Fatalf("% x: forwarding a question that is not for the recursors: %+v", pkt, q)
		}
		return
	}
	r := new(mdns.Msg)
	if err := r.Unpack(resp); err != nil {
		t.Fatalf("unparseable reply % x to % x: %v", resp, pkt, err)
	}
	if len(pkt) >= 2 && r.Id != binary.BigEndian.Uint16(pkt) || !r.Response {
		t.Fatalf("reply %v to % x", r, pkt)
	}
	if !tcp && len(resp) > max(q.size, 512) {
		t.Fatalf("a UDP reply of %d bytes to a client taking %d", len(resp), q.size)
	}
	if q.domOff >= 0 && r.Rcode != mdns.RcodeSuccess && r.Rcode != mdns.RcodeNameError {
		t.Fatalf("a catalog name answered %s: % x", mdns.RcodeToString[r.Rcode], pkt)
	}
	if len(r.Question) == 1 && q.name != nil {
		var nb [256]byte
		n, err := mdns.PackDomainName(r.Question[0].Name, nb[:], 0, nil, false)
		if err != nil || !bytes.Equal(nb[:n], q.name) {
			t.Fatalf("the reply's question %q is not the query's % x", r.Question[0].Name, q.name)
		}
	}
}

func seedPackets(f *testing.F) {
	for _, name := range []string{"redis.service.consul.", "_redis._tcp.service.consul.", "HelloWorld.node.dc1.consul.", "example.org.", "consul.", "7f000001.addr.consul.", "x.y.z."} {
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeSRV, mdns.TypeAAAA, mdns.TypeANY, mdns.TypeAXFR} {
			m := new(mdns.Msg)
			m.SetQuestion(name, qt)
			b, _ := m.Pack()
			f.Add(b)
			m.SetEdns0(4096, true)
			b, _ = m.Pack()
			f.Add(b)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1})
}

// FuzzQuery feeds arbitrary packets to the query handling of both paths.
func FuzzQuery(f *testing.F) {
	seedPackets(f)
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		handle(t, s, pkt, false)
		handle(t, s, pkt, true)
	})
}

// FuzzName feeds arbitrary names and types, packed as a real client would,
// to the name parsing and the catalog answers.
func FuzzName(f *testing.F) {
	for _, n := range []string{"redis.service.consul.", "master.redis.service.dc1.consul.", "_a._b.service.consul.", "a.node.consul.", "ffffffff.addr.consul.", "consul.", "\\046.service.consul.", "a\\.b.node.consul."} {
		f.Add(n, uint16(mdns.TypeA), uint16(1232))
	}
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, name string, qtype, edns uint16) {
		m := new(mdns.Msg)
		m.SetQuestion(name, qtype)
		if edns > 0 {
			m.SetEdns0(edns, false)
		}
		pkt, err := m.Pack()
		if err != nil {
			return
		}
		handle(t, s, pkt, false)
		handle(t, s, pkt, true)
	})
}

// FuzzServe sends each packet to a running server through real sockets on
// 127.0.0.1, with a local upstream behind it for names outside the domain.
// Over UDP, a packet the parsers take gets exactly one reply, a well-formed
// answer to it with a known rcode within the client's size, and one they
// refuse gets none; over TCP, any reply is such an answer. Either way the
// server answers the next query on the same socket.
func FuzzServe(f *testing.F) {
	seedPackets(f)
	up := startUpstream(f, func(q mdns.Question) *mdns.Msg {
		m := new(mdns.Msg)
		if q.Qtype == mdns.TypeA {
			m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}}}
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		return m
	})
	s := start(f, catalog(f), func(c *Config) { c.Recursors = []string{up.addr} })
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) > maxQuery {
			pkt = pkt[:maxQuery] // longer ones are cut to this by the server
		}
		var keybuf [keyCap]byte
		var namebuf [256]byte
		var q query
		due := parseQuery(pkt, &keybuf, s.domain, &q)
		if !due {
			q, due = s.parseSlow(pkt, &keybuf, &namebuf)
		}
		probeID := uint16(1)
		if len(pkt) >= 2 {
			probeID = ^binary.BigEndian.Uint16(pkt)
		}
		probe := new(mdns.Msg)
		probe.SetQuestion("redis.service.consul.", mdns.TypeA)
		probe.Id = probeID
		pb, err := probe.Pack()
		if err != nil {
			t.Fatal(err)
		}

		c, err := net.Dial("udp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 65536)
		if _, err := c.Write(pkt); err != nil {
			t.Fatal(err)
		}
		if due {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("no reply over UDP to % x: %v", pkt, err)
			}
			checkReply(t, pkt, buf[:n])
			if n > max(q.size, 512) {
				t.Fatalf("a UDP reply of %d bytes to a client taking %d: % x", n, q.size, pkt)
			}
		}
		if _, err := c.Write(pb); err != nil {
			t.Fatal(err)
		}
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no reply over UDP to the query after % x: %v", pkt, err)
		}
		if r := checkReply(t, pb, buf[:n]); r.Id != probeID {
			t.Fatalf("a second reply over UDP to % x: %v", pkt, r)
		}

		tc, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		msg := binary.BigEndian.AppendUint16(nil, uint16(len(pkt)))
		msg = append(msg, pkt...)
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(pb)))
		msg = append(msg, pb...)
		if _, err := tc.Write(msg); err != nil {
			t.Fatal(err)
		}
		for {
			var l [2]byte
			if _, err := io.ReadFull(tc, l[:]); err != nil {
				if errors.Is(err, io.EOF) {
					return // the server may close a connection that sent garbage
				}
				t.Fatalf("reading over TCP after % x: %v", pkt, err)
			}
			b := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(tc, b); err != nil {
				t.Fatalf("reading over TCP after % x: %v", pkt, err)
			}
			var r *mdns.Msg
			if r = checkReply(t, pkt, b); r == nil {
				r = checkReply(t, pb, b)
			}
			if r.Id == probeID && len(r.Question) == 1 && r.Question[0].Name == "redis.service.consul." {
				return
			}
		}
	})
}

// checkReply asserts that b is a well-formed reply to pkt with a known
// rcode and returns it. Where pkt's ID does not match b's, it returns nil
// so that the caller can try the next query.
func checkReply(t *testing.T, pkt, b []byte) *mdns.Msg {
	t.Helper()
	r := new(mdns.Msg)
	if err := r.Unpack(b); err != nil {
		t.Fatalf("unparseable reply % x to % x: %v", b, pkt, err)
	}
	if len(pkt) >= 2 && r.Id != binary.BigEndian.Uint16(pkt) {
		return nil
	}
	if !r.Response {
		t.Fatalf("reply %v to % x is not a response", r, pkt)
	}
	switch r.Rcode {
	case mdns.RcodeSuccess, mdns.RcodeFormatError, mdns.RcodeServerFailure, mdns.RcodeNameError,
		mdns.RcodeNotImplemented, mdns.RcodeRefused, mdns.RcodeBadVers:
	default:
		t.Fatalf("reply %v to % x has rcode %d", r, pkt, r.Rcode)
	}
	return r
}
