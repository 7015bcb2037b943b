package dns

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry"
)

func requireDig(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig is not installed (Debian's dnsutils; .ci/run installs it)")
	}
	return p
}

// dig runs the real dig against addr and returns its +short output lines,
// sorted, or the full output with short false.
func dig(t *testing.T, addr string, args ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	all := append([]string{"@" + host, "-p", port, "+time=10", "+tries=1"}, args...)
	out, err := exec.Command("dig", all...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(all, " "), err, out)
	}
	return string(out)
}

func shortLines(s string) []string {
	l := strings.Fields(s)
	slices.Sort(l)
	return l
}

func TestDig(t *testing.T) {
	requireDig(t)
	reg := catalog(t)
	for i := range 30 {
		register(t, reg, registry.Service{ID: "many" + itoa(i), Name: "many", Address: "10.7.0." + itoa(i+1), Port: 1})
	}
	up := fakeUpstream(t)
	s := start(t, reg, func(c *Config) { c.Recursors = []string{up.addr} })

	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"redis.service.consul", "+short"}, []string{"127.0.0.1", "172.16.0.2"}},
		{[]string{"redis.service.consul", "+short", "+tcp"}, []string{"127.0.0.1", "172.16.0.2"}},
		{[]string{"helloworld.node.consul", "+short", "+tcp"}, []string{"127.0.0.1"}},
		{[]string{"consul.service.consul", "+short"}, []string{"127.0.0.1"}},
		{[]string{"master.redis.service.consul", "+short", "+notcp"}, []string{"172.16.0.2"}},
		{[]string{"_redis._tcp.service.consul", "SRV", "+short"}, []string{"1", "1", "1", "1", "8000", "8001", "ac100002.addr.dc1.consul.", "helloworld.node.dc1.consul."}},
		{[]string{"six.service.consul", "AAAA", "+short"}, []string{"2001:db8::1"}},
		{[]string{"example.org", "+short"}, []string{"192.0.2.1"}},
	} {
		if got := shortLines(dig(t, s.addr, c.args...)); !slices.Equal(got, c.want) {
			t.Errorf("dig %s: %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}

	// The SRV additional section carries the targets' addresses.
	out := dig(t, s.addr, "redis.service.consul", "SRV")
	if !strings.Contains(out, "ADDITIONAL SECTION") || !regexp.MustCompile(`helloworld\.node\.dc1\.consul\.\s+0\s+IN\s+A\s+127\.0\.0\.1`).MatchString(out) {
		t.Errorf("dig SRV: no additional A record\n%s", out)
	}
	// Unknown name: NXDOMAIN with the SOA; no record of the type: NOERROR with SOA.
	out = dig(t, s.addr, "nothere.service.consul")
	if !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "IN\tSOA\tns.consul. hostmaster.consul.") {
		t.Errorf("dig NXDOMAIN:\n%s", out)
	}
	out = dig(t, s.addr, "redis.service.consul", "MX")
	if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "ANSWER: 0") || !strings.Contains(out, "SOA") {
		t.Errorf("dig NODATA:\n%s", out)
	}
	// Without EDNS, 30 answers do not fit: 3 and TC, then dig retries over
	// TCP by itself and gets all of them.
	out = dig(t, s.addr, "many.service.consul", "+noedns", "+ignore")
	if !strings.Contains(out, " tc ") && !strings.Contains(out, " tc;") || !strings.Contains(out, "ANSWER: 3,") {
		t.Errorf("dig +noedns +ignore: want 3 answers and tc\n%s", out)
	}
	if got := shortLines(dig(t, s.addr, "many.service.consul", "+noedns", "+short")); len(got) != 30 {
		t.Errorf("dig +noedns (retrying over TCP): %d answers, want 30", len(got))
	}
	// A bad question gets a proper error.
	out = dig(t, s.addr, "redis.service.consul", "AXFR")
	if !strings.Contains(out, "NOTIMP") && !strings.Contains(out, "Transfer failed") {
		t.Errorf("dig AXFR:\n%s", out)
	}
}

// TestRecursionFromNetns sends queries from a non-loopback source: a
// network namespace made for the test, joined to this one by a veth pair.
// Recursion is refused there unless AllowRecursion covers it; the catalog
// answers anyone.
func TestRecursionFromNetns(t *testing.T) {
	requireDig(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) to make a network namespace")
	}
	ns := "pierdns" + itoa(os.Getpid()%100000)
	hostIf, nsIf := "pd"+itoa(os.Getpid()%100000)+"a", "pd"+itoa(os.Getpid()%100000)+"b"
	run := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return &netnsError{args, string(out)}
		}
		return nil
	}
	if err := run("netns", "add", ns); err != nil {
		t.Skipf("cannot make a network namespace: %v", err)
	}
	t.Cleanup(func() { run("link", "del", hostIf); run("netns", "del", ns) })
	// 100.64/10 (shared address space) is not routed here, and this pair is
	// the only path to it.
	for _, args := range [][]string{
		{"link", "add", hostIf, "type", "veth", "peer", "name", nsIf},
		{"link", "set", nsIf, "netns", ns},
		{"addr", "add", "100.127.253.1/30", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", ns, "addr", "add", "100.127.253.2/30", "dev", nsIf},
		{"-n", ns, "link", "set", nsIf, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := run(args...); err != nil {
			t.Skipf("cannot set up the namespace: %v", err)
		}
	}
	up := fakeUpstream(t)
	digFrom := func(addr string, args ...string) string {
		host, port, _ := net.SplitHostPort(addr)
		all := append([]string{"netns", "exec", ns, "dig", "@" + host, "-p", port, "+time=10", "+tries=1"}, args...)
		out, err := exec.Command("ip", all...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(all, " "), err, out)
		}
		return string(out)
	}
	closed := start(t, catalog(t), func(c *Config) {
		c.Addrs = []string{"100.127.253.1:0"}
		c.Recursors = []string{up.addr}
	})
	if out := digFrom(closed.addr, "example.org"); !strings.Contains(out, "status: REFUSED") || strings.Contains(out, " ra") {
		t.Errorf("recursion from 100.127.253.2 without -dns-allow:\n%s", out)
	}
	if out := digFrom(closed.addr, "redis.service.consul", "+short"); !slices.Equal(shortLines(out), []string{"127.0.0.1", "172.16.0.2"}) {
		t.Errorf("the catalog from 100.127.253.2: %q", out)
	}
	if n := up.queries.Load(); n != 0 {
		t.Errorf("the upstream saw %d queries from a refused client", n)
	}
	open := start(t, catalog(t), func(c *Config) {
		c.Addrs = []string{"100.127.253.1:0"}
		c.Recursors = []string{up.addr}
		c.AllowRecursion = []netip.Prefix{netip.MustParsePrefix("100.127.253.0/30")}
	})
	if out := digFrom(open.addr, "example.org", "+short"); strings.TrimSpace(out) != "192.0.2.1" {
		t.Errorf("recursion with AllowRecursion: %q", out)
	}
}

type netnsError struct {
	args []string
	out  string
}

func (e *netnsError) Error() string {
	return "ip " + strings.Join(e.args, " ") + ": " + strings.TrimSpace(e.out)
}
