package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/pier-dev/pier/deploy/eventually"
)

// pebbleVersion is Let's Encrypt's test CA the ACME tests run against;
// .ci/run builds it first (PIER_PEBBLE_BIN), so that CI never skips.
const pebbleVersion = "v2.10.3"

// pebbleBin builds pebble into the user's cache dir once, or skips.
func pebbleBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PIER_PEBBLE_BIN"); p != "" {
		return p
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "pier-test", "pebble-"+pebbleVersion)
	bin := filepath.Join(dir, "pebble")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command("go", "install", "github.com/letsencrypt/pebble/v2/cmd/pebble@"+pebbleVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod")
	cmd.Dir = os.TempDir() // outside pier's module: pebble's own go.mod decides its dependencies
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("pebble %s could not be built (go install github.com/letsencrypt/pebble/v2/cmd/pebble@%s, or set PIER_PEBBLE_BIN): %v\n%s", pebbleVersion, pebbleVersion, err, out)
	}
	return bin
}

// pebbleCA is a running pebble.
type pebbleCA struct {
	cmd        *exec.Cmd
	out        *syncBuffer
	dir, mgmt  string // the ACME directory URL, the management address
	exited     chan struct{}
	httpClient *http.Client
}

// startPebble runs pebble on loopback with its certificates' lifetime,
// validating challenges for real: every name resolves (through dnsAddr) to
// 127.0.0.1, and it dials httpPort and tlsPort there.
func startPebble(t *testing.T, pki testPKI, dnsAddr string, httpPort, tlsPort int, validity time.Duration) *pebbleCA {
	t.Helper()
	return startPebbleWith(t, pki, dnsAddr, httpPort, tlsPort, validity, pebbleOpts{})
}

// pebbleOpts are startPebble's less common settings.
type pebbleOpts struct {
	ocspURL string // put in the certificates as their OCSP responder
	rsa     bool   // RSA keys for the CA (its management API gives out RSA keys only)
}

func startPebbleWith(t *testing.T, pki testPKI, dnsAddr string, httpPort, tlsPort int, validity time.Duration, o pebbleOpts) *pebbleCA {
	t.Helper()
	bin := pebbleBin(t)
	keyAlg := "ecdsa"
	if o.rsa {
		keyAlg = "rsa"
	}
	dir := t.TempDir()
	listen, mgmt := freeLoopback(t), freeLoopback(t)
	cfg := fmt.Sprintf(`{"pebble": {"listenAddress": %q, "managementListenAddress": %q,
  "certificate": %q, "privateKey": %q, "httpPort": %d, "tlsPort": %d, "ocspResponderURL": %q,
  "externalAccountBindingRequired": false, "retryAfter": {"authz": 1, "order": 1}, "keyAlgorithm": %q,
  "profiles": {"default": {"description": "short-lived for the renewal test", "validityPeriod": %d}}}}`,
		listen, mgmt, pki.certFile, pki.keyFile, httpPort, tlsPort, o.ocspURL, keyAlg, int(validity.Seconds()))
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &pebbleCA{out: &syncBuffer{}, dir: "https://" + listen + "/dir", mgmt: mgmt, exited: make(chan struct{}),
		httpClient: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}}}}
	p.cmd = exec.Command(bin, "-config", cfgFile, "-dnsserver", dnsAddr)
	p.cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(p.stop)
	eventually.True(t, 15*time.Second, "pebble answers its directory", func() bool {
		res, err := p.httpClient.Get(p.dir)
		if err == nil {
			res.Body.Close()
		}
		return err == nil && res.StatusCode == 200
	})
	return p
}

func (p *pebbleCA) stop() {
	p.cmd.Process.Kill()
	<-p.exited
}

// roots is pebble's root, which it makes anew at each start.
func (p *pebbleCA) roots(t *testing.T) *x509.CertPool {
	t.Helper()
	res, err := p.httpClient.Get("https://" + p.mgmt + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatalf("pebble's root: %q", b)
	}
	return pool
}

// orders counts the orders pebble took.
func (p *pebbleCA) orders() int { return strings.Count(p.out.String(), "Added order") }

// startLoopbackDNS answers every A question with 127.0.0.1 (and AAAA with
// nothing), over TCP, which pebble's validator asks with.
func startLoopbackDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qq := range q.Question {
			if qq.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		w.WriteMsg(m)
	})
	srv := &dns.Server{Listener: ln, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// servedLeaf is the certificate a front door's TLS listener shows for
// name, verified against roots.
func servedLeaf(addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// metricValue reads one counter from an agent's /metrics.
func metricValue(t *testing.T, apiAddr, name string) float64 {
	t.Helper()
	res, err := http.Get("http://" + apiAddr + "/metrics")
	if err != nil {
		return -1
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` ([0-9.e+]+)$`).FindSubmatch(b)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// TestACMETwoFrontDoors runs two front doors (a server agent and a client
// agent) that manage one name against pebble: one order at the CA, the
// certificate served by both, renewed by one before it expires and served
// renewed by both, and with the CA down the old certificate keeps serving
// while the failures are logged and counted. ARI is off: pebble's renewal
// window for a 45-second certificate opens at issuance, so a renewed
// certificate could be renewed again at once (a third order, seen once in
// CI), and the count of orders would not show whether both doors ordered.
func TestACMETwoFrontDoors(t *testing.T) {
	needBinary(t)
	pebbleBin(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	dnsAddr := startLoopbackDNS(t)
	httpA, tlsA := freePort(t), freePort(t)
	const lifetime = 45 * time.Second
	ca := startPebble(t, pki, dnsAddr, httpA, tlsA, lifetime)
	const name = "app.pier.test"
	conf := func(file, addr, tlsAddr string) string {
		p := filepath.Join(dir, file)
		os.WriteFile(p, []byte(fmt.Sprintf(`
proxy:
  addr: %q
  tls:
    addr: %q
    acme: {email: ops@pier.test, ca: %q, ca_root: %q, names: [%s], renew_check: 1s, disable_ari: true}
`, addr, tlsAddr, ca.dir, pki.caFile, name)), 0o600)
		return p
	}
	a := startAgent(t, append([]string{"-node", "acme-a", "-data-dir", filepath.Join(dir, "a"), "-bind", "127.0.0.1",
		"-config-file", conf("a.yaml", fmt.Sprint("127.0.0.1:", httpA), fmt.Sprint("127.0.0.1:", tlsA))}, soloServer...)...)
	b := startAgent(t, "-node", "acme-b", "-data-dir", filepath.Join(dir, "b"), "-bind", "127.0.0.1", "-join", a.gossip,
		"-config-file", conf("b.yaml", "127.0.0.1:0", "127.0.0.1:0"))
	tlsB := proxyTLSLine.FindStringSubmatch(b.logs())
	if tlsB == nil {
		t.Fatalf("no proxy_tls= in b's log:\n%s", b.logs())
	}
	roots := ca.roots(t)
	doors := map[string]string{"a": fmt.Sprint("127.0.0.1:", tlsA), "b": tlsB[1]}
	dump := func() string {
		return fmt.Sprintf("pebble:\n%s\na:\n%s\nb:\n%s", ca.out.String(), a.logs(), b.logs())
	}
	// waitServed waits until both doors serve one certificate, other than
	// not, and answers it.
	waitServed := func(what string, not *x509.Certificate, within time.Duration) *x509.Certificate {
		t.Helper()
		var got *x509.Certificate
		err := eventually.Within(within, func() error {
			got = nil
			for door, addr := range doors {
				c, err := servedLeaf(addr, name, roots)
				if err != nil {
					return fmt.Errorf("door %s: %w", door, err)
				}
				if not != nil && c.SerialNumber.Cmp(not.SerialNumber) == 0 {
					return fmt.Errorf("door %s: still the old certificate", door)
				}
				if got != nil && got.SerialNumber.Cmp(c.SerialNumber) != 0 {
					return fmt.Errorf("the doors serve different certificates")
				}
				got = c
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: not served by both front doors in %s: %v\n%s", what, within, err, dump())
		}
		return got
	}
	first := waitServed("the first certificate", nil, 60*time.Second)
	if n := ca.orders(); n != 1 {
		t.Fatalf("pebble took %d orders for one name on two front doors, want 1\n%s", n, dump())
	}
	if first.DNSNames[0] != name {
		t.Fatalf("served %v, want %s", first.DNSNames, name)
	}
	issued := metricValue(t, a.addr, "pier_proxy_acme_certificates_total") + metricValue(t, b.addr, "pier_proxy_acme_certificates_total")
	if issued != 1 {
		t.Errorf("pier_proxy_acme_certificates_total over both doors = %v, want 1", issued)
	}

	// Renewal: a third of the lifetime before expiry, with no restart,
	// one order, and both doors serve the new certificate.
	renewed := waitServed("the renewed certificate", first, lifetime)
	if n := ca.orders(); n != 2 {
		t.Fatalf("pebble took %d orders after one renewal, want 2\n%s", n, dump())
	}

	// The CA goes down: the next renewal fails, is logged and counted,
	// and the certificate held keeps serving.
	// (The client may have counted failures already: its first tries,
	// before it joined, found no server.)
	errs := func() float64 {
		return metricValue(t, a.addr, "pier_proxy_acme_errors_total") + metricValue(t, b.addr, "pier_proxy_acme_errors_total")
	}
	before, loggedA, loggedB := errs(), len(a.logs()), len(b.logs())
	ca.stop()
	eventually.True(t, lifetime, "a renewal failure counted in pier_proxy_acme_errors_total", func() bool {
		return errs() > before
	})
	if !strings.Contains(a.logs()[loggedA:]+b.logs()[loggedB:], "obtaining or renewing a certificate failed") {
		t.Errorf("no renewal failure in the logs\n%s", dump())
	}
	for door, addr := range doors {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("door %s with the CA down: %v", door, err)
		}
		if got := c.ConnectionState().PeerCertificates[0]; got.SerialNumber.Cmp(renewed.SerialNumber) != 0 {
			t.Errorf("door %s serves serial %v with the CA down, want the held %v", door, got.SerialNumber, renewed.SerialNumber)
		}
		c.Close()
	}
}

// TestACMETLSALPN: the CA cannot reach the front door's plain port, so
// HTTP-01 fails and the TLS-ALPN-01 challenge, answered on the TLS
// listener, gets the certificate. The keys are in the KV, hidden from
// /v1/kv.
func TestACMETLSALPN(t *testing.T) {
	needBinary(t)
	pebbleBin(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	tlsPort := freePort(t)
	closed := freePort(t) // nothing listens here
	ca := startPebble(t, pki, startLoopbackDNS(t), closed, tlsPort, time.Hour)
	const name = "alpn.pier.test"
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
proxy:
  addr: 127.0.0.1:0
  tls:
    addr: 127.0.0.1:%d
    acme: {ca: %q, ca_root: %q}
  routes:
    - {host: %s, service: web, tls: acme}
`, tlsPort, ca.dir, pki.caFile, name)), 0o600)
	a := startAgent(t, "-dev", "-node", "alpn", "-config-file", cfg)
	roots := ca.roots(t)
	eventually.NoError(t, 90*time.Second, "the certificate by TLS-ALPN-01", func() error {
		_, err := servedLeaf(fmt.Sprint("127.0.0.1:", tlsPort), name, roots)
		return err
	})
	if !strings.Contains(a.logs(), "challenge_type=tls-alpn-01") {
		t.Errorf("no tls-alpn-01 challenge in the log:\n%s", a.logs())
	}
	// /v1/kv shows none of it, to any token; the ACME path does.
	for _, u := range []string{"/v1/kv/?recurse", "/v1/kv/?keys", "/v1/kv/_pier/acme/?recurse"} {
		if code, body := curl(t, "http://"+a.addr+u); strings.Contains(body, "_pier/acme") || strings.Contains(body, "PRIVATE KEY") {
			t.Errorf("%s: %d %s", u, code, body)
		}
	}
	if code, body := curl(t, "http://"+a.addr+"/v1/pier/acme/kv/?keys"); code != 200 || !strings.Contains(body, "_pier/acme/certificates/") {
		t.Errorf("/v1/pier/acme/kv/?keys: %d %s", code, body)
	}
	if code, body := curl(t, "-X", "PUT", "-d", "x", "http://"+a.addr+"/v1/kv/_pier/acme/certificates/x"); code != 400 {
		t.Errorf("a /v1/kv write under _pier/acme/: %d %s, want 400", code, body)
	}
}

// TestACMEWithACLs: with ACLs on, the front door's storage asks with
// proxy.tls.acme.token, a token with operator:write and node and session
// write (a lock's session is created for the front door's node); a
// token with every KV rule cannot read the keys, nor can the anonymous one.
func TestACMEWithACLs(t *testing.T) {
	needBinary(t)
	pebbleBin(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	httpPort := freePort(t)
	ca := startPebble(t, pki, startLoopbackDNS(t), httpPort, freePort(t), time.Hour)
	const name = "acl.pier.test"
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
acl:
  enabled: true
  default_policy: deny
  tokens:
    initial_management: root-secret
  tokens_list:
    - secret: front-secret
      rules: |
        operator = "write"
        node_prefix "" { policy = "write" }
        session_prefix "" { policy = "write" }
    - secret: kv-secret
      rules: |
        key_prefix "" { policy = "write" }
proxy:
  addr: 127.0.0.1:%d
  tls:
    addr: 127.0.0.1:0
    acme: {ca: %q, ca_root: %q, names: [%s], token: front-secret}
`, httpPort, ca.dir, pki.caFile, name)), 0o600)
	a := startAgent(t, append([]string{"-node", "acl-acme", "-data-dir", filepath.Join(dir, "data"), "-bind", "127.0.0.1", "-config-file", cfg}, soloServer...)...)
	m := proxyTLSLine.FindStringSubmatch(a.logs())
	if m == nil {
		t.Fatalf("no proxy_tls= in the log:\n%s", a.logs())
	}
	roots := ca.roots(t)
	if err := eventually.Within(60*time.Second, func() error {
		_, err := servedLeaf(m[1], name, roots)
		return err
	}); err != nil {
		t.Fatalf("no certificate with ACLs on: %v\n%s\n%s", err, a.logs(), ca.out.String())
	}
	for tok, want := range map[string]int{"": 403, "kv-secret": 403, "front-secret": 200, "root-secret": 200} {
		if code, body := curl(t, "-H", "X-Consul-Token: "+tok, "http://"+a.addr+"/v1/pier/acme/kv/?keys"); code != want {
			t.Errorf("token %q: %d %s, want %d", tok, code, body, want)
		}
	}
	for _, tok := range []string{"kv-secret", "root-secret"} {
		if _, body := curl(t, "-H", "X-Consul-Token: "+tok, "http://"+a.addr+"/v1/kv/?recurse"); strings.Contains(body, "_pier/acme") {
			t.Errorf("token %q reads the ACME keys through /v1/kv: %s", tok, body)
		}
	}
}
