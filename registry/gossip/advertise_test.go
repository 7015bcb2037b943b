package gossip

import (
	"net"
	"testing"
)

func TestAdvertiseAddr(t *testing.T) {
	if got, _ := AdvertiseAddr("0.0.0.0", "10.1.2.3"); got != "10.1.2.3" {
		t.Errorf("advertise set: got %q, want it as given", got)
	}
	if got, _ := AdvertiseAddr("192.168.7.7", ""); got != "192.168.7.7" {
		t.Errorf("specific bind: got %q, want the bind address", got)
	}
	ipnet := func(s string) net.Addr { return &net.IPNet{IP: net.ParseIP(s), Mask: net.CIDRMask(24, 32)} }
	cases := []struct {
		name  string
		addrs []net.Addr
		want  string
	}{
		{"private before public", []net.Addr{ipnet("127.0.0.1"), ipnet("8.8.4.4"), ipnet("10.0.0.5")}, "10.0.0.5"},
		{"public when no private", []net.Addr{ipnet("127.0.0.1"), ipnet("169.254.1.1"), ipnet("8.8.4.4")}, "8.8.4.4"},
		{"IPv6 skipped", []net.Addr{ipnet("fd00::1"), ipnet("172.16.0.9")}, "172.16.0.9"},
	}
	for _, c := range cases {
		if got, err := pickAdvertise(c.addrs); err != nil || got != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	if _, err := pickAdvertise([]net.Addr{ipnet("127.0.0.1")}); err == nil {
		t.Error("only loopback: want an error that says to set -advertise or -bind")
	}
}
