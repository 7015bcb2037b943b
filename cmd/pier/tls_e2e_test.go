package main

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/testca"
)

// testPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, as PEM files in dir.
type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	client                    tls.Certificate
}

func newTestPKI(t *testing.T, dir string) testPKI {
	t.Helper()
	ca := testca.New(t, dir, "pier test")
	srv := ca.Issue(t, "server", []net.IP{net.ParseIP("127.0.0.1")}, x509.ExtKeyUsageServerAuth)
	cli := ca.Issue(t, "client", nil, x509.ExtKeyUsageClientAuth)
	return testPKI{caFile: ca.File, certFile: srv.CertFile, keyFile: srv.KeyFile, pool: ca.Pool(), client: cli.TLS}
}

var httpsLine = regexp.MustCompile(` https=([0-9.:]+)`)

// TestHTTPSAPI serves the API over TLS with Consul's settings, and with
// verify_incoming requires a client certificate signed by ca_file.
func TestHTTPSAPI(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	for _, verify := range []bool{false, true} {
		cfg := filepath.Join(dir, "tls.yaml")
		os.WriteFile(cfg, []byte("ca_file: "+pki.caFile+"\ncert_file: "+pki.certFile+"\nkey_file: "+pki.keyFile+
			"\nverify_incoming: "+map[bool]string{true: "true", false: "false"}[verify]+"\n"), 0o600)
		a := startAgent(t, "-dev", "-https-port", "0", "-config-file", cfg)
		m := httpsLine.FindStringSubmatch(a.logs())
		if m == nil {
			t.Fatalf("no https= in the log:\n%s", a.logs())
		}
		get := func(withCert bool) (*http.Response, error) {
			tc := &tls.Config{RootCAs: pki.pool}
			if withCert {
				tc.Certificates = []tls.Certificate{pki.client}
			}
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
			return c.Get("https://" + m[1] + "/v1/agent/self")
		}
		resp, err := get(!verify)
		if verify {
			if err == nil {
				resp.Body.Close()
				t.Error("verify_incoming: a client without a certificate got in")
			}
			resp, err = get(true)
		}
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("verify=%v: GET over HTTPS: %v %v", verify, err, resp)
		}
		if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
			t.Errorf("TLS version %v", resp.TLS)
		}
		resp.Body.Close()
		old := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool, MaxVersion: tls.VersionTLS11, Certificates: []tls.Certificate{pki.client}}}}
		if resp, err := old.Get("https://" + m[1] + "/v1/agent/self"); err == nil {
			resp.Body.Close()
			t.Error("TLS 1.1 was accepted")
		}
		a.stop(os.Interrupt)
	}
	_, errOut, rc := pier(t, "agent", "-dev", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0", "-https-port", "0")
	if rc != 2 || !strings.Contains(errOut, "cert_file") {
		t.Errorf("-https-port without a certificate: %d %q", rc, errOut)
	}
}
