package dns

import (
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// udpAsk sends one query over a raw UDP socket and returns the datagram
// that comes back, whole: its length is what an attacker who spoofed the
// source address would have aimed at the victim.
func udpAsk(t *testing.T, addr string, m *mdns.Msg) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("%s %s: %v", m.Question[0].Name, mdns.TypeToString[m.Question[0].Qtype], err)
	}
	return buf[:n]
}

// TestNoAmplification asks, over UDP, questions whose full answers are
// large (a service with 100 instances, ANY, forwarded names whose upstream
// answers run to kilobytes) with every EDNS payload size a client might
// advertise, and checks that no reply is larger than 512 bytes without EDNS,
// or than the advertised size capped at Config.MaxUDPSize (1232) with it;
// that a reply that left answers out says so with TC; and that over TCP the
// whole answer is still there.
func TestNoAmplification(t *testing.T) {
	reg := newRegistry(t)
	for i := range 100 {
		register(t, reg, registry.Service{ID: "web" + itoa(i), Name: "web", Tags: []string{"v1"},
			Address: "10.9." + itoa(i/200) + "." + itoa(i%200+1), Port: 8000 + i})
	}
	for i := range 100 {
		register(t, reg, registry.Service{ID: "web6-" + itoa(i), Name: "web6", Address: "2001:db8::" + itoa(i+1), Port: 80})
	}
	var big []mdns.RR // a forwarded answer of about 5 KB
	for i := range 300 {
		big = append(big, rr(t, "big.example. 300 IN A 192.0.2."+itoa(i%250+1)))
	}
	var txt []mdns.RR
	for i := range 20 {
		txt = append(txt, rr(t, `big.example. 300 IN TXT "`+itoa(i)+` aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"`))
	}
	up := startUpstream(t, func(q mdns.Question) *mdns.Msg {
		m := new(mdns.Msg)
		switch q.Qtype {
		case mdns.TypeA:
			m.Answer = big
		case mdns.TypeTXT:
			m.Answer = txt
		case mdns.TypeANY:
			m.Answer = append(append([]mdns.RR(nil), big...), txt...)
		}
		return m
	})
	s := start(t, reg, func(c *Config) { c.Recursors = []string{up.addr} })
	if s.cfg.MaxUDPSize != 1232 {
		t.Fatalf("MaxUDPSize = %d, this test assumes the default 1232", s.cfg.MaxUDPSize)
	}

	questions := []struct {
		name  string
		qtype uint16
	}{
		{"web.service.consul.", mdns.TypeA},
		{"web.service.consul.", mdns.TypeSRV},
		{"web.service.consul.", mdns.TypeANY},
		{"v1.web.service.consul.", mdns.TypeANY},
		{"_web._tcp.service.consul.", mdns.TypeSRV},
		{"web6.service.consul.", mdns.TypeAAAA},
		{"web6.service.consul.", mdns.TypeANY},
		{"helloworld.node.consul.", mdns.TypeANY},
		{"consul.", mdns.TypeANY},
		{"big.example.", mdns.TypeA},
		{"big.example.", mdns.TypeTXT},
		{"big.example.", mdns.TypeANY},
	}
	for _, q := range questions {
		full := ask(t, s.addr, "tcp", q.name, q.qtype, 0)
		if full.Rcode != mdns.RcodeSuccess || len(full.Answer) == 0 {
			t.Errorf("%s %s over TCP: %s with %d answers", q.name, mdns.TypeToString[q.qtype], mdns.RcodeToString[full.Rcode], len(full.Answer))
			continue
		}
		fullLen, _ := full.Pack()
		for _, edns := range []int{0, 1, 512, 600, 1000, 1232, 1400, 4096, 65535} {
			m := new(mdns.Msg)
			m.SetQuestion(q.name, q.qtype)
			limit := 512
			if edns > 0 {
				m.SetEdns0(uint16(edns), false)
				limit = min(max(512, edns), 1232)
			}
			wire := udpAsk(t, s.addr, m)
			var r mdns.Msg
			if err := r.Unpack(wire); err != nil {
				t.Errorf("%s %s EDNS %d: %v", q.name, mdns.TypeToString[q.qtype], edns, err)
				continue
			}
			if len(wire) > limit {
				t.Errorf("%s %s EDNS %d: a %d-byte reply over UDP, want at most %d", q.name, mdns.TypeToString[q.qtype], edns, len(wire), limit)
			}
			if len(r.Answer) < len(full.Answer) && !r.Truncated {
				t.Errorf("%s %s EDNS %d: %d of %d answers without TC", q.name, mdns.TypeToString[q.qtype], edns, len(r.Answer), len(full.Answer))
			}
			if edns > 0 && r.IsEdns0() == nil {
				t.Errorf("%s %s EDNS %d: no OPT in the reply", q.name, mdns.TypeToString[q.qtype], edns)
			}
			if edns == 65535 {
				t.Logf("%-26s %-4s %5d bytes over TCP, %4d over UDP (%d of %d answers, TC %v)", q.name, mdns.TypeToString[q.qtype],
					len(fullLen), len(wire), len(r.Answer), len(full.Answer), r.Truncated)
			}
		}
	}
}
