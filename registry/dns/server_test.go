package dns

import (
	"context"
	"net"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

// TestPortInUse: the UDP sockets share their port (SO_REUSEPORT), but a
// second server on a taken port is still refused, not given half the traffic.
func TestPortInUse(t *testing.T) {
	reg := newRegistry(t)
	a := start(t, reg, nil)
	cfg := DefaultConfig()
	cfg.Registry = reg
	cfg.ResolvConf = ""
	cfg.Addrs = []string{a.addr}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("a second server on %s: %v", a.addr, err)
	}
	if err := s.Listen(); err == nil {
		t.Error("Listen after a failed Run succeeded")
	}
	// The first one still answers everything.
	for range 20 {
		if r := ask(t, a.addr, "udp", "consul.service.consul.", mdns.TypeA, 0); len(r.Answer) != 1 {
			t.Fatalf("first server: %v", r)
		}
	}
}

func TestRunTwice(t *testing.T) {
	s := start(t, newRegistry(t), nil)
	if err := s.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("second Run: %v", err)
	}
}

func TestIPv6AndSeveralAddrs(t *testing.T) {
	if l, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		l.Close()
	}
	s := start(t, catalog(t), func(c *Config) { c.Addrs = []string{"127.0.0.1:0", "[::1]:0"} })
	addrs := s.Addrs()
	if len(addrs) != 2 {
		t.Fatalf("Addrs: %v", addrs)
	}
	for _, a := range addrs {
		for _, network := range []string{"udp", "tcp"} {
			r := ask(t, a.String(), network, "redis.service.consul.", mdns.TypeA, 0)
			if len(r.Answer) != 2 {
				t.Errorf("%s %s: %v", network, a, r)
			}
		}
	}
}
