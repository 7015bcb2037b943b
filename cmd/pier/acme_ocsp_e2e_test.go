package main

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/pier-dev/pier/deploy/eventually"
)

// ocspResponder is an OCSP responder on loopback that signs with pebble's
// intermediate (the issuer of its certificates): good for every serial
// but those revoked, or a 503 while down. Its answers are valid for
// ocspValidity, so certmagic asks again after half of it.
type ocspResponder struct {
	url string

	mu      sync.Mutex
	issuer  *x509.Certificate
	key     crypto.Signer
	revoked map[string]bool // serials, in decimal
	down    bool
}

const ocspValidity = 8 * time.Second

func startOCSPResponder(t *testing.T) *ocspResponder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &ocspResponder{url: "http://" + ln.Addr().String() + "/", revoked: map[string]bool{}}
	srv := &http.Server{Handler: o, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return o
}

// sign takes pebble's intermediate certificate and key, once pebble runs.
func (o *ocspResponder) sign(t *testing.T, ca *pebbleCA) {
	t.Helper()
	get := func(path string) *pem.Block {
		res, err := ca.httpClient.Get("https://" + ca.mgmt + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		blk, _ := pem.Decode(b)
		if res.StatusCode != 200 || blk == nil {
			t.Fatalf("pebble %s: %d %q", path, res.StatusCode, b)
		}
		return blk
	}
	cert, err := x509.ParseCertificate(get("/intermediates/0").Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS1PrivateKey(get("/intermediate-keys/0").Bytes)
	if err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	o.issuer, o.key = cert, key
	o.mu.Unlock()
}

func (o *ocspResponder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if r.Method == http.MethodGet {
		http.Error(w, "POST only", http.StatusMethodNotAllowed) // certmagic POSTs
		return
	}
	req, perr := ocsp.ParseRequest(b)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down || o.issuer == nil {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	if err != nil || perr != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	now := time.Now().Truncate(time.Second)
	tmpl := ocsp.Response{Status: ocsp.Good, SerialNumber: req.SerialNumber, ThisUpdate: now.Add(-time.Second), NextUpdate: now.Add(ocspValidity - time.Second)}
	if o.revoked[req.SerialNumber.String()] {
		tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, now.Add(-time.Second), ocsp.Superseded
	}
	resp, err := ocsp.CreateResponse(o.issuer, o.issuer, tmpl, o.key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(resp)
}

func (o *ocspResponder) set(down bool, revoke *big.Int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.down = down
	if revoke != nil {
		o.revoked[revoke.String()] = true
	}
}

// staple is what a client sees: the leaf and the OCSP response stapled to
// the handshake, checked against the issuer the server sent.
type staple struct {
	leaf *x509.Certificate
	resp *ocsp.Response // nil: nothing stapled
}

func stapled(addr, name string, roots *x509.CertPool) (staple, error) {
	var got staple
	cfg := &tls.Config{ServerName: name, RootCAs: roots, VerifyConnection: func(cs tls.ConnectionState) error {
		got.leaf = cs.PeerCertificates[0]
		if len(cs.OCSPResponse) == 0 {
			return nil
		}
		if len(cs.PeerCertificates) < 2 {
			return errors.New("a staple without the issuer in the chain")
		}
		r, err := ocsp.ParseResponseForCert(cs.OCSPResponse, cs.PeerCertificates[0], cs.PeerCertificates[1])
		if err != nil {
			return fmt.Errorf("the staple: %w", err)
		}
		got.resp = r
		return nil
	}}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return got, err
	}
	c.Close()
	return got, nil
}

// TestACMEOCSPStapling: pebble puts a loopback OCSP responder's URL in the
// certificates; the front door staples its good answer, which a client
// sees and verifies against the issuer. With the responder down the
// failure is logged and the staple held keeps being served; when the
// responder says the certificate is revoked, certmagic replaces the
// certificate at once and staples the new one's good answer.
func TestACMEOCSPStapling(t *testing.T) {
	needBinary(t)
	pebbleBin(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	resp := startOCSPResponder(t)
	httpPort, tlsPort := freePort(t), freePort(t)
	// At least 7 days: certmagic does not log OCSP failures of shorter-lived
	// certificates.
	ca := startPebbleWith(t, pki, startLoopbackDNS(t), httpPort, tlsPort, 8*24*time.Hour, pebbleOpts{ocspURL: resp.url, rsa: true})
	resp.sign(t, ca)
	const name = "ocsp.pier.test"
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
proxy:
  addr: 127.0.0.1:%d
  tls:
    addr: 127.0.0.1:%d
    acme: {ca: %q, ca_root: %q, names: [%s], renew_check: 1s}
`, httpPort, tlsPort, ca.dir, pki.caFile, name)), 0o600)
	a := startAgent(t, "-dev", "-node", "ocsp", "-config-file", cfg)
	roots := ca.roots(t)
	door := fmt.Sprint("127.0.0.1:", tlsPort)
	dump := func() string { return "pebble:\n" + ca.out.String() + "\nagent:\n" + a.logs() }
	waitGood := func(what string, not *big.Int) staple {
		t.Helper()
		var s staple
		if err := eventually.Within(60*time.Second, func() error {
			var err error
			if s, err = stapled(door, name, roots); err != nil {
				return err
			}
			switch {
			case not != nil && s.leaf.SerialNumber.Cmp(not) == 0:
				return errors.New("still the old certificate")
			case s.resp == nil:
				return errors.New("no staple")
			case s.resp.Status != ocsp.Good:
				return fmt.Errorf("staple status %d", s.resp.Status)
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, dump())
		}
		if s.resp.SerialNumber.Cmp(s.leaf.SerialNumber) != 0 {
			t.Fatalf("%s: the staple is for serial %v, the certificate %v", what, s.resp.SerialNumber, s.leaf.SerialNumber)
		}
		return s
	}
	first := waitGood("a good staple", nil)
	if len(first.leaf.OCSPServer) != 1 || first.leaf.OCSPServer[0] != resp.url {
		t.Fatalf("the certificate names OCSP %v, want %s", first.leaf.OCSPServer, resp.url)
	}

	// Down: past the staple's refresh point the fetch fails and is
	// logged; the held staple is still served.
	logged := len(a.logs())
	resp.set(true, nil)
	downAt := time.Now()
	eventually.True(t, 2*ocspValidity, "the failed OCSP fetch logged", func() bool {
		return strings.Contains(a.logs()[logged:], `msg="acme: stapling OCSP"`)
	})
	if s, err := stapled(door, name, roots); err != nil || s.resp == nil || s.resp.Status != ocsp.Good || s.leaf.SerialNumber.Cmp(first.leaf.SerialNumber) != 0 || s.resp.ThisUpdate.After(downAt) {
		t.Errorf("with the responder down: %+v, %v; want the staple held from before, good, for serial %v", s, err, first.leaf.SerialNumber)
	}

	// Revoked: the certificate is replaced (one more order), with a good
	// staple for the new one.
	resp.set(false, first.leaf.SerialNumber)
	second := waitGood("a new certificate after the revocation", first.leaf.SerialNumber)
	if !strings.Contains(a.logs(), "OCSP status for managed certificate is REVOKED") {
		t.Errorf("no log line for the revoked certificate\n%s", a.logs())
	}
	if n := ca.orders(); n != 2 {
		t.Errorf("pebble took %d orders, want 2 (the first and the replacement)", n)
	}
	if second.resp.SerialNumber.Cmp(first.leaf.SerialNumber) == 0 {
		t.Errorf("the new certificate's staple is the revoked one's")
	}
}
