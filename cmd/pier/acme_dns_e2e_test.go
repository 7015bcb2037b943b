package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestACMEDNS01Wildcard: with proxy.tls.acme.challenges: [dns-01], pebble
// asks pier's own DNS server (its -dnsserver) for the TXT record of
// _acme-challenge.example.test, which the front door stored in the KV,
// and issues *.example.test: any name under it gets the certificate. The
// records are gone once the order is done.
func TestACMEDNS01Wildcard(t *testing.T) {
	d := startDNS01(t, `"*.example.test"`)
	dnsAddr, dnsPort, ca, cfg := d.dnsAddr, d.dnsPort, d.ca, d.cfg
	// A recursor where nobody listens: names without a record go nowhere.
	a := startAgent(t, "-dev", "-node", "dns01", "-dns-port", dnsPort, "-recursor", freeLoopback(t), "-config-file", cfg)
	if a.dns != dnsAddr {
		t.Fatalf("the agent's DNS is on %s, want %s", a.dns, dnsAddr)
	}
	m := proxyTLSLine.FindStringSubmatch(a.logs())
	if m == nil {
		t.Fatalf("no proxy_tls= in the log:\n%s", a.logs())
	}
	roots := ca.roots(t)
	dump := func() string { return "pebble:\n" + ca.out.String() + "\nagent:\n" + a.logs() }
	var serial string
	for _, name := range []string{"www.example.test", "api.example.test"} {
		if err := eventually.Within(60*time.Second, func() error {
			c, err := servedLeaf(m[1], name, roots)
			if err != nil {
				return err
			}
			if len(c.DNSNames) != 1 || c.DNSNames[0] != "*.example.test" {
				return fmt.Errorf("served %v", c.DNSNames)
			}
			if serial != "" && c.SerialNumber.String() != serial {
				return fmt.Errorf("serial %v, another name got %s", c.SerialNumber, serial)
			}
			serial = c.SerialNumber.String()
			return nil
		}); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, dump())
		}
	}
	if !strings.Contains(ca.out.String(), `Type:"dns", Value:"example.test"}, Challenge:`) || !strings.Contains(a.logs(), "challenge_type=dns-01") {
		t.Errorf("no dns-01 challenge validated\n%s", dump())
	}
	if n := ca.orders(); n != 1 {
		t.Errorf("pebble took %d orders, want 1", n)
	}
	if _, err := servedLeaf(m[1], "example.test", roots); err == nil {
		t.Errorf("the wildcard's parent got a certificate; *.example.test does not cover it")
	}
	// Cleaned up: no record in the KV, none answered.
	eventually.True(t, 10*time.Second, "the challenge records deleted", func() bool {
		code, _ := curl(t, "http://"+a.addr+"/v1/pier/acme/kv/dns/?keys")
		return code == 404
	})
	q := new(dns.Msg)
	q.SetQuestion("_acme-challenge.example.test.", dns.TypeTXT)
	r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(q, dnsAddr)
	if err != nil || len(r.Answer) != 0 {
		t.Errorf("after the order: %v, %v; want no TXT record", r, err)
	}
}

// TestACMEDNS01AskedElsewhere: the front door is a client agent, and the
// CA asks the server's DNS, which has no front door and answers the record
// the client wrote through it into the Raft log.
func TestACMEDNS01AskedElsewhere(t *testing.T) {
	d := startDNS01(t, `"*.else.test", "else.test"`)
	dir, dnsPort, ca, cfg := d.dir, d.dnsPort, d.ca, d.cfg
	srv := startAgent(t, append([]string{"-node", "dns-srv", "-data-dir", filepath.Join(dir, "srv"), "-bind", "127.0.0.1",
		"-dns-port", dnsPort, "-recursor", freeLoopback(t)}, soloServer...)...)
	cli := startAgent(t, "-node", "dns-cli", "-data-dir", filepath.Join(dir, "cli"), "-bind", "127.0.0.1", "-join", srv.gossip, "-config-file", cfg)
	m := proxyTLSLine.FindStringSubmatch(cli.logs())
	if m == nil {
		t.Fatalf("no proxy_tls= in the log:\n%s", cli.logs())
	}
	roots := ca.roots(t)
	dump := func() string {
		return "pebble:\n" + ca.out.String() + "\nserver:\n" + srv.logs() + "\nclient:\n" + cli.logs()
	}
	for _, name := range []string{"else.test", "www.else.test"} {
		if err := eventually.Within(60*time.Second, func() error {
			_, err := servedLeaf(m[1], name, roots)
			return err
		}); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, dump())
		}
	}
	// A failed validation would have meant another order.
	if n := ca.orders(); n != 2 {
		t.Errorf("pebble took %d orders for two names, want 2\n%s", n, dump())
	}
}

// dns01Env is pebble asking a DNS address of the test's for its DNS-01
// challenges (nobody listens on the HTTP-01 and TLS-ALPN-01 ports it would
// dial), and a config file for a front door that gets names with dns-01.
type dns01Env struct {
	dir, dnsAddr, dnsPort, cfg string
	pki                        testPKI
	ca                         *pebbleCA
}

func startDNS01(t *testing.T, names string) dns01Env {
	t.Helper()
	needBinary(t)
	pebbleBin(t)
	d := dns01Env{dir: t.TempDir(), dnsAddr: freeLoopback(t)}
	d.pki = newTestPKI(t, d.dir)
	_, d.dnsPort, _ = strings.Cut(d.dnsAddr, ":")
	d.ca = startPebble(t, d.pki, d.dnsAddr, freePort(t), freePort(t), time.Hour)
	d.cfg = filepath.Join(d.dir, "pier.yaml")
	os.WriteFile(d.cfg, []byte(fmt.Sprintf(`
proxy:
  addr: 127.0.0.1:0
  tls:
    addr: 127.0.0.1:0
    acme: {ca: %q, ca_root: %q, names: [%s], challenges: [dns-01]}
`, d.ca.dir, d.pki.caFile, names)), 0o600)
	return d
}
