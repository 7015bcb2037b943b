package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestACMEThreeFrontDoorsAtOnce starts three front doors (client agents of
// one server) at the same moment, each managing the same two names: the
// CA takes exactly one order per name, more than one front door went for
// the names' locks (so the lock, not the timing, kept the orders to one),
// and all three serve the same certificate for each name.
func TestACMEThreeFrontDoorsAtOnce(t *testing.T) {
	needBinary(t)
	pebbleBin(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	httpA, tlsA := freePort(t), freePort(t)
	ca := startPebble(t, pki, startLoopbackDNS(t), httpA, tlsA, time.Hour)
	names := []string{"one.pier.test", "two.pier.test"}

	srv := startAgent(t, append([]string{"-node", "acme-srv", "-data-dir", filepath.Join(dir, "srv"), "-bind", "127.0.0.1"}, soloServer...)...)
	waitLeader(t, srv)
	// The CA validates at the first front door's ports; the other two
	// order through it (the challenge data is in the shared storage).
	listen := [3][2]string{
		{fmt.Sprint("127.0.0.1:", httpA), fmt.Sprint("127.0.0.1:", tlsA)},
		{"127.0.0.1:0", "127.0.0.1:0"},
		{"127.0.0.1:0", "127.0.0.1:0"},
	}
	var doors [3]*proc
	var wg sync.WaitGroup
	for i := range doors {
		cfg := filepath.Join(dir, fmt.Sprintf("door%d.yaml", i))
		os.WriteFile(cfg, []byte(fmt.Sprintf(`
proxy:
  addr: %q
  tls:
    addr: %q
    acme: {ca: %q, ca_root: %q, names: [%s]}
`, listen[i][0], listen[i][1], ca.dir, pki.caFile, strings.Join(names, ", "))), 0o600)
		args := []string{"-node", fmt.Sprintf("door%d", i), "-data-dir", filepath.Join(dir, fmt.Sprint("d", i)), "-bind", "127.0.0.1",
			"-join", srv.gossip, "-config-file", cfg}
		wg.Add(1)
		go func() {
			defer wg.Done()
			doors[i] = startAgent(t, args...) // a failure marks t failed; doors[i] stays nil
		}()
	}
	wg.Wait()
	tlsAddrs := make([]string, len(doors))
	for i, d := range doors {
		if d == nil {
			t.FailNow()
		}
		m := proxyTLSLine.FindStringSubmatch(d.logs())
		if m == nil {
			t.Fatalf("no proxy_tls= in door %d's log:\n%s", i, d.logs())
		}
		tlsAddrs[i] = m[1]
	}
	dump := func() string {
		s := "pebble:\n" + ca.out.String()
		for i, d := range doors {
			s += fmt.Sprintf("\ndoor %d:\n%s", i, d.logs())
		}
		return s
	}
	roots := ca.roots(t)
	for _, name := range names {
		var served *x509.Certificate
		err := eventually.Within(90*time.Second, func() error {
			served = nil
			for i, addr := range tlsAddrs {
				c, err := servedLeaf(addr, name, roots)
				if err != nil {
					return fmt.Errorf("door %d: %w", i, err)
				}
				if served != nil && c.SerialNumber.Cmp(served.SerialNumber) != 0 {
					return fmt.Errorf("door %d serves serial %v, another %v", i, c.SerialNumber, served.SerialNumber)
				}
				served = c
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: not one certificate served by all three doors: %v\n%s", name, err, dump())
		}
		if served.DNSNames[0] != name {
			t.Errorf("%s: served a certificate for %v", name, served.DNSNames)
		}
	}
	// Every order yields one certificate for one name, and each name was
	// served: as many orders as names is one order per name.
	if n := ca.orders(); n != len(names) {
		t.Fatalf("pebble took %d orders for %d names on three front doors, want one per name\n%s", n, len(names), dump())
	}
	for _, name := range names {
		tried, obtained := 0, 0
		for _, d := range doors {
			logs := d.logs()
			if logLine("acme: acquiring lock", name).MatchString(logs) {
				tried++
			}
			if logLine("acme: certificate obtained", name).MatchString(logs) {
				obtained++
			}
		}
		if obtained != 1 {
			t.Errorf("%s: %d front doors obtained a certificate, want 1\n%s", name, obtained, dump())
		}
		if tried < 2 {
			t.Errorf("%s: %d front doors went for the lock: the doors did not contend, so the test proved nothing\n%s", name, tried, dump())
		}
	}
}

// logLine matches an agent's log line with message msg about identifier.
func logLine(msg, identifier string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)msg="` + regexp.QuoteMeta(msg) + `" .*\bidentifier=` + regexp.QuoteMeta(identifier) + `( |$)`)
}

// TestACMERouteNames: proxy.tls.acme with no names; a service tag
// urlprefix-<host>/ tls=acme and a KV route with tls: acme, added while
// the front door runs, each get a certificate with no restart; a name
// sent by SNI that no route has gets none and is never ordered; a name
// outside proxy.tls.acme.allow is not ordered; and when the tag's service
// goes, its name is neither served nor renewed while the KV route's name
// is renewed.
func TestACMERouteNames(t *testing.T) {
	needBinary(t)
	pebbleBin(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	httpPort, tlsPort := freePort(t), freePort(t)
	const lifetime = 30 * time.Second
	ca := startPebble(t, pki, startLoopbackDNS(t), httpPort, tlsPort, lifetime)
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
proxy:
  addr: 127.0.0.1:%d
  tls:
    addr: 127.0.0.1:%d
    acme: {ca: %q, ca_root: %q, renew_check: 1s, allow: ["*.pier.test"]}
`, httpPort, tlsPort, ca.dir, pki.caFile)), 0o600)
	a := startAgent(t, "-dev", "-node", "routes-acme", "-config-file", cfg)
	roots := ca.roots(t)
	door := fmt.Sprint("127.0.0.1:", tlsPort)
	const tagName, kvName, stranger, outside = "tag.pier.test", "kv.pier.test", "nobody.pier.test", "shop.example.org"
	dump := func() string { return "pebble:\n" + ca.out.String() + "\nagent:\n" + a.logs() }

	// Before any route: nothing is ordered, whatever a client asks for.
	if _, err := servedLeaf(door, stranger, roots); err == nil {
		t.Fatalf("a certificate for %s, which no route has", stranger)
	}
	if code, body := curl(t, "-X", "PUT", "-d", fmt.Sprintf(`{"Name":"web","ID":"web1","Port":1,"Tags":["urlprefix-%s/ tls=acme","urlprefix-%s/ tls=acme"]}`, tagName, outside),
		"http://"+a.addr+"/v1/agent/service/register"); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	if code, body := curl(t, "-X", "PUT", "-d", fmt.Sprintf(`{host: %s, service: web, tls: acme}`, kvName), "http://"+a.addr+"/v1/kv/pier/routes/kv"); code != 200 {
		t.Fatalf("KV route: %d %s", code, body)
	}
	first := map[string]*x509.Certificate{}
	for _, name := range []string{tagName, kvName} {
		if err := eventually.Within(60*time.Second, func() error {
			c, err := servedLeaf(door, name, roots)
			first[name] = c
			return err
		}); err != nil {
			t.Fatalf("%s: no certificate after its route appeared: %v\n%s", name, err, dump())
		}
	}
	if _, err := servedLeaf(door, stranger, roots); err == nil {
		t.Errorf("a certificate for %s, which no route has", stranger)
	}
	if !strings.Contains(a.logs(), `msg="acme: a route's tls=acme name is not managed" component=proxy component=acme name=`+outside) {
		t.Errorf("no log line for %s, outside proxy.tls.acme.allow\n%s", outside, a.logs())
	}
	if logLine("acme: obtaining certificate", outside).MatchString(a.logs()) || logLine("acme: obtaining certificate", stranger).MatchString(a.logs()) {
		t.Errorf("a name without an allowed route was ordered\n%s", dump())
	}
	// /v1/pier/routes says which tls=acme routes are managed.
	_, body := curl(t, "http://"+a.addr+"/v1/pier/routes")
	var routes []struct{ Host, Source, ACME string }
	if err := json.Unmarshal([]byte(body), &routes); err != nil {
		t.Fatalf("/v1/pier/routes: %v %s", err, body)
	}
	got := map[string]string{}
	for _, r := range routes {
		got[r.Host] = r.Source + " " + r.ACME
	}
	for host, want := range map[string]string{tagName: "tag managed", kvName: "kv managed", outside: "tag refused"} {
		if got[host] != want {
			t.Errorf("/v1/pier/routes: %s is %q, want %q", host, got[host], want)
		}
	}

	// The tag's service goes: its name is dropped at once, and over the
	// next renewal of the KV route's name it is not renewed.
	if code, body := curl(t, "-X", "PUT", "http://"+a.addr+"/v1/agent/service/deregister/web1"); code != 200 {
		t.Fatalf("deregister: %d %s", code, body)
	}
	eventually.True(t, 10*time.Second, "the tag's name no longer served", func() bool {
		_, err := servedLeaf(door, tagName, roots)
		return err != nil
	})
	renewed := func(name string) int {
		return len(regexp.MustCompile(`(?m)msg="acme: certificate obtained" .*identifier=`+regexp.QuoteMeta(name)+` renewal=true`).FindAllString(a.logs(), -1))
	}
	tagRenewals := renewed(tagName)
	kvRenewals := renewed(kvName)
	if err := eventually.Within(lifetime+10*time.Second, func() error {
		c, err := servedLeaf(door, kvName, roots)
		if err != nil || c.SerialNumber.Cmp(first[kvName].SerialNumber) == 0 || renewed(kvName) == kvRenewals {
			return fmt.Errorf("%s not renewed yet (%v)", kvName, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, dump())
	}
	if n := renewed(tagName); n != tagRenewals {
		t.Errorf("%s was renewed %d times after its route went\n%s", tagName, n-tagRenewals, dump())
	}
}
