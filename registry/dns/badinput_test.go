package dns

import (
	"encoding/binary"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rawQuery sends pkt over UDP and returns the reply, or nil when none came
// within the timeout (used only where no reply is the expected outcome is
// not tested: see TestNoReply).
func rawQuery(t *testing.T, addr string, pkt []byte) *mdns.Msg {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no reply to % x: %v", pkt[:min(len(pkt), 32)], err)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("unparseable reply % x: %v", buf[:n], err)
	}
	if m.Id != binary.BigEndian.Uint16(pkt) {
		t.Errorf("reply ID %d, query ID %d", m.Id, binary.BigEndian.Uint16(pkt))
	}
	return m
}

func packed(t *testing.T, edit func(m *mdns.Msg)) []byte {
	m := new(mdns.Msg)
	m.Id = 4242
	m.SetQuestion("redis.service.consul.", mdns.TypeA)
	m.Id = 4242
	edit(m)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withOption appends an option's raw bytes to the OPT record that ends pkt
// (packed with no options), and counts them in its length.
func withOption(pkt []byte, raw ...byte) []byte {
	n := len(pkt)
	binary.BigEndian.PutUint16(pkt[n-2:], uint16(len(raw)))
	return append(pkt, raw...)
}

func TestBadInput(t *testing.T) {
	s := start(t, catalog(t), nil)
	hdr := func(flags uint16, qd, an, ns, ar uint16) []byte {
		b := make([]byte, 12)
		binary.BigEndian.PutUint16(b, 4242)
		binary.BigEndian.PutUint16(b[2:], flags)
		binary.BigEndian.PutUint16(b[4:], qd)
		binary.BigEndian.PutUint16(b[6:], an)
		binary.BigEndian.PutUint16(b[8:], ns)
		binary.BigEndian.PutUint16(b[10:], ar)
		return b
	}
	long := strings.Repeat("a", 63)
	cases := []struct {
		what  string
		pkt   []byte
		rcode int
	}{
		{"no question", hdr(0x0100, 0, 0, 0, 0), mdns.RcodeFormatError},
		{"two questions", packed(t, func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) }), mdns.RcodeFormatError},
		{"header claims a question that is not there", hdr(0x0100, 1, 0, 0, 0), mdns.RcodeFormatError},
		{"truncated question", append(hdr(0, 1, 0, 0, 0), 5, 'r', 'e'), mdns.RcodeFormatError},
		{"a name of 320 bytes", append(append(hdr(0, 1, 0, 0, 0), []byte(strings.Repeat("\x3f"+long, 5))...), 0, 0, 1, 0, 1), mdns.RcodeFormatError},
		{"a compression loop", append(hdr(0, 1, 0, 0, 0), 0xc0, 12, 0, 1, 0, 1), mdns.RcodeFormatError},
		{"opcode STATUS", packed(t, func(m *mdns.Msg) { m.Opcode = mdns.OpcodeStatus }), mdns.RcodeNotImplemented},
		{"opcode UPDATE", packed(t, func(m *mdns.Msg) { m.Opcode = mdns.OpcodeUpdate }), mdns.RcodeNotImplemented},
		{"NOTIFY", packed(t, func(m *mdns.Msg) { m.Opcode = mdns.OpcodeNotify }), mdns.RcodeNotImplemented},
		{"AXFR", packed(t, func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeAXFR }), mdns.RcodeNotImplemented},
		{"IXFR", packed(t, func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeIXFR }), mdns.RcodeNotImplemented},
		{"qtype OPT", packed(t, func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeOPT }), mdns.RcodeFormatError},
		{"class CHAOS", packed(t, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS }), mdns.RcodeRefused},
		{"class ANY", packed(t, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassANY }), mdns.RcodeSuccess},
		{"EDNS version 1", packed(t, func(m *mdns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) }), mdns.RcodeBadVers},
		{"unknown type", packed(t, func(m *mdns.Msg) { m.Question[0].Qtype = 65280 }), mdns.RcodeSuccess},
		{"EDNS with a cookie", packed(t, func(m *mdns.Msg) {
			m.SetEdns0(1232, true)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"})
		}), mdns.RcodeSuccess},
		{"an answer record in the query", packed(t, func(m *mdns.Msg) { m.Answer = []mdns.RR{rr(t, "x. 0 IN A 1.2.3.4")} }), mdns.RcodeSuccess},
		{"trailing garbage", append(packed(t, func(*mdns.Msg) {}), 1, 2, 3), mdns.RcodeSuccess},
		{"EDNS with a client-subnet option of one byte", withOption(packed(t, func(m *mdns.Msg) { m.SetEdns0(1232, false) }), 0, 8, 0, 1, 9), mdns.RcodeFormatError},
		{"EDNS with an option longer than the record", withOption(packed(t, func(m *mdns.Msg) { m.SetEdns0(1232, false) }), 0, 10, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8), mdns.RcodeFormatError},
		{"EDNS with a client subnet", packed(t, func(m *mdns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_SUBNET{Code: mdns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(10, 1, 2, 0)})
		}), mdns.RcodeSuccess},
		{"a query of 8 KiB, read as its first 4 KiB", packed(t, func(m *mdns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_LOCAL{Code: 65001, Data: make([]byte, 8000)})
		}), mdns.RcodeFormatError},
	}
	for _, c := range cases {
		r := rawQuery(t, s.addr, c.pkt)
		if r.Rcode != c.rcode || !r.Response {
			t.Errorf("%s: %s, want %s", c.what, mdns.RcodeToString[r.Rcode], mdns.RcodeToString[c.rcode])
		}
	}
	// Over TCP, the same rules through miekg/dns's server.
	for _, c := range []struct {
		qtype uint16
		rcode int
	}{{mdns.TypeAXFR, mdns.RcodeNotImplemented}, {mdns.TypeA, mdns.RcodeSuccess}} {
		r := ask(t, s.addr, "tcp", "redis.service.consul.", c.qtype, 0)
		if r.Rcode != c.rcode {
			t.Errorf("tcp %s: %s", mdns.TypeToString[c.qtype], mdns.RcodeToString[r.Rcode])
		}
	}
	// An empty datagram gets no reply, and the query after it on the same
	// socket gets its own.
	c, err := net.Dial("udp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	q := packed(t, func(*mdns.Msg) {})
	if _, err := c.Write(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(q); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if n, err := c.Read(buf); err != nil {
		t.Fatal(err)
	} else if m := new(mdns.Msg); m.Unpack(buf[:n]) != nil || m.Id != 4242 || len(m.Answer) != 2 {
		t.Errorf("after an empty datagram: % x", buf[:n])
	}
	// Still serving.
	if r := ask(t, s.addr, "udp", "redis.service.consul.", mdns.TypeA, 0); len(r.Answer) != 2 {
		t.Errorf("after bad input: %v", r)
	}
}

// TestNoReply: packets that are not queries get no answer at all (an answer
// to a response could start a loop between two servers). Checked on the
// handler: a socket test would have to wait for something not to happen.
func TestNoReply(t *testing.T) {
	s := start(t, catalog(t), nil)
	resp := packed(t, func(m *mdns.Msg) { m.Response = true })
	for _, pkt := range [][]byte{nil, {1, 2, 3}, resp, append(resp, 0xff)} {
		var keybuf [keyCap]byte
		var namebuf [256]byte
		var q query
		if parseQuery(pkt, &keybuf, s.domain, &q) {
			t.Errorf("% x: taken by the fast path", pkt)
		}
		if _, ok := s.parseSlow(pkt, &keybuf, &namebuf); ok {
			t.Errorf("% x: would be answered", pkt)
		}
	}
}
