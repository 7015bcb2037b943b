package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProxyRouteTLSKeys: a config file's route takes tls, tls_skip_verify,
// tls_server_name and tls_ca_file; a mistaken one stops the agent with an
// error naming the route and the key, and unknown keys are still refused.
func TestProxyRouteTLSKeys(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, selfSignedPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(routes string) (*agentConfig, error) {
		p := filepath.Join(dir, "pier.yaml")
		os.WriteFile(p, []byte("proxy:\n  routes:\n"+routes), 0o600)
		c := &agentConfig{}
		return c, c.loadFile(p)
	}
	c, err := load("    - path: /a/\n      service: a\n      tls: true\n      tls_server_name: a.internal\n      tls_ca_file: " + ca + "\n" +
		"    - path: /b/\n      service: b\n      tls: true\n      tls_skip_verify: true\n")
	if err != nil {
		t.Fatal(err)
	}
	rs := c.Proxy.proxy.Routes
	if len(rs) != 2 || !rs[0].TLS || rs[0].TLSServerName != "a.internal" || rs[0].TLSCAFile != ca || !rs[1].TLS || !rs[1].TLSSkipVerify {
		t.Errorf("routes: %+v", rs)
	}
	for _, c := range []struct{ routes, want string }{
		{"    - path: /a/\n      service: a\n      tls: true\n      tls_ca_file: " + filepath.Join(dir, "missing.pem") + "\n", "proxy.routes[0].tls_ca_file"},
		{"    - path: /a/\n      service: a\n      tls_skip_verify: true\n", "need tls: true"},
		{"    - path: /a/\n      service: a\n      tls: true\n      tls_verify: false\n", "unknown key"},
	} {
		if _, err := load(c.routes); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.routes, err, c.want)
		}
	}
}

// selfSignedPEM makes a throwaway certificate in PEM.
func selfSignedPEM(t *testing.T) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestProxyUpstreamTLSEndToEnd runs the built binary with a route that
// reaches its instance over HTTPS, verified with the route's CA bundle.
func TestProxyUpstreamTLSEndToEnd(t *testing.T) {
	requireCurl(t)
	backend := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello over tls=%v sni=%q: %s\n", r.TLS != nil, r.TLS.ServerName, r.URL.RequestURI())
	}))
	defer backend.Close()
	dir := t.TempDir()
	// httptest's certificate is its own CA, for 127.0.0.1 and example.com.
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: backend.Certificate().Raw}), 0o600)
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(`
proxy:
  addr: 127.0.0.1:0
  routes:
    - path: /byip/
      service: api
      strip: /byip
      tls: true
      tls_ca_file: `+ca+`
    - path: /byname/
      service: api
      strip: /byname
      tls: true
      tls_ca_file: `+ca+`
      tls_server_name: example.com
`), 0o600)
	a := startAgent(t, "-dev", "-node", "front", "-config-file", cfg)
	port := backend.Listener.Addr().(*net.TCPAddr).Port
	if code, body := curl(t, "-X", "PUT", "-d", fmt.Sprintf(`{"ID":"api-1","Name":"api","Address":"127.0.0.1","Port":%d}`, port),
		"http://"+a.addr+"/v1/agent/service/register"); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	proxy := "http://" + a.proxyAddr()
	for path, want := range map[string]string{
		"/byip/x?y=1": `hello over tls=true sni="": /x?y=1`,
		"/byname/z":   `hello over tls=true sni="example.com": /z`,
	} {
		if code, body := curl(t, proxy+path); code != 200 || !strings.Contains(body, want) {
			t.Errorf("%s: %d %q, want %q", path, code, body, want)
		}
	}
	out, errOut, rc := pier(t, "routes", "-http-addr", a.addr)
	if rc != 0 || strings.Count(out, "api (https)") != 2 {
		t.Errorf("pier routes: rc=%d\n%s%s", rc, out, errOut)
	}
}
