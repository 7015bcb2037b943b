package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/pier-dev/pier/deploy/eventually"
)

// writeCert makes a self-signed certificate for names, writes it and its
// key as PEM files under dir and returns the pair and the certificate.
func writeCert(t *testing.T, dir, base string, serial int64, names ...string) (CertFiles, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: names[0]},
		DNSNames:              names,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed: the client trusts it as its own root
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := CertFiles{CertFile: filepath.Join(dir, base+".crt"), KeyFile: filepath.Join(dir, base+".key")}
	if err := os.WriteFile(f.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f, cert
}

// tlsEnv is an env whose proxy also serves HTTPS on its own listener.
type tlsEnv struct {
	*env
	tlsAddr string
	a, b    *x509.Certificate // for a.test and b.test (and *.b.test)
	files   []CertFiles
	dir     string
}

func newTLSEnv(t *testing.T, tweak func(*TLSConfig), more ...func(*Config)) *tlsEnv {
	t.Helper()
	dir := t.TempDir()
	fa, a := writeCert(t, dir, "a", 1, "a.test")
	fb, b := writeCert(t, dir, "b", 2, "b.test", "*.b.test")
	tc := &TLSConfig{Certs: []CertFiles{fa, fb}, ReloadCheck: time.Millisecond}
	if tweak != nil {
		tweak(tc)
	}
	e := newEnv(t, func(c *Config) {
		c.TLS = tc
		c.Routes = []Route{{Path: "/", Service: "web"}}
		for _, f := range more {
			f(c)
		}
	})
	ln := listen(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.p.RunTLS(e.ctx, ln); err != nil {
			t.Errorf("RunTLS: %v", err)
		}
	}()
	t.Cleanup(func() { e.close(); <-done })
	be := newBackend(t, "web1")
	e.register("web1", "web", be.addr, 1)
	e.synced()
	return &tlsEnv{env: e, tlsAddr: ln.Addr().String(), a: a, b: b, files: tc.Certs, dir: dir}
}

// handshake opens a TLS connection naming sni and returns the server's
// certificate.
func (e *tlsEnv) handshake(sni string, cfg *tls.Config) (*x509.Certificate, error) {
	if cfg == nil {
		cfg = &tls.Config{InsecureSkipVerify: true}
	}
	cfg.ServerName = sni
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", e.tlsAddr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0], nil
}

// client trusts the test's certificates and sends every request to the
// proxy's TLS listener whatever the URL's host.
func (e *tlsEnv) client(t *testing.T, roots ...*x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, e.tlsAddr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func TestTLSProxiesBySNI(t *testing.T) {
	e := newTLSEnv(t, nil)
	hc := e.client(t, e.a, e.b)
	for _, tc := range []struct {
		host string
		want *x509.Certificate
	}{
		{"a.test", e.a},
		{"b.test", e.b},
		{"www.b.test", e.b},
	} {
		resp, err := hc.Get("https://" + tc.host + "/hello?x=1")
		if err != nil {
			t.Fatalf("%s: %v", tc.host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d: %s", tc.host, resp.StatusCode, body)
		}
		if got := resp.TLS.PeerCertificates[0]; !got.Equal(tc.want) {
			t.Errorf("%s: served the certificate for %v", tc.host, got.DNSNames)
		}
		ec := decode(t, string(body))
		if ec.URI != "/hello?x=1" || ec.Host != tc.host {
			t.Errorf("%s: backend got %s %s", tc.host, ec.Host, ec.URI)
		}
		if got := ec.Header.Get("X-Forwarded-Proto"); got != "https" {
			t.Errorf("%s: X-Forwarded-Proto %q, want https", tc.host, got)
		}
	}
	// A name no certificate has gets the first one.
	got, err := e.handshake("other.test", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(e.a) {
		t.Errorf("unknown SNI: served %v, want the first certificate", got.DNSNames)
	}
	// Plain HTTP still works and says so.
	code, body := e.get("a.test", "/p")
	if code != 200 {
		t.Fatalf("plain: %d %s", code, body)
	}
	if got := decode(t, body).Header.Get("X-Forwarded-Proto"); got != "http" {
		t.Errorf("plain: X-Forwarded-Proto %q, want http", got)
	}
}

func TestTLSReloadsChangedFiles(t *testing.T) {
	e := newTLSEnv(t, nil)
	// Rewrite a.test's pair in place, as a renewal would; the future
	// mtime makes the change visible whatever the file system's clock
	// granularity.
	_, renewed := writeCert(t, e.dir, "a", 99, "a.test")
	future := time.Now().Add(time.Minute)
	for _, f := range []string{e.files[0].CertFile, e.files[0].KeyFile} {
		if err := os.Chtimes(f, future, future); err != nil {
			t.Fatal(err)
		}
	}
	eventually.NoError(t, 10*time.Second, "the renewed certificate served", servesCert(e, "a.test", renewed))
	// The renewed certificate carries requests through the proxy.
	resp, err := e.client(t, renewed).Get("https://a.test/after")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after reload: status %d", resp.StatusCode)
	}
	// A broken file keeps the loaded certificate in use: handshake until
	// one of them has looked at the files since the write.
	written := time.Now().UnixNano()
	if err := os.WriteFile(e.files[1].CertFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "a reload check after the broken write", func() bool {
		got, err := e.handshake("b.test", nil)
		if err != nil {
			t.Fatalf("after a broken file: %v", err)
		}
		if !got.Equal(e.b) {
			t.Fatalf("after a broken file: served %v", got.DNSNames)
		}
		return e.p.certs.checked.Load() > written
	})
}

// servesCert is a condition for eventually: a handshake naming sni gets
// want.
func servesCert(e *tlsEnv, sni string, want *x509.Certificate) func() error {
	return func() error {
		got, err := e.handshake(sni, nil)
		if err != nil {
			return err
		}
		if !got.Equal(want) {
			return fmt.Errorf("serving serial %v, want %v", got.SerialNumber, want.SerialNumber)
		}
		return nil
	}
}

func TestTLSVersions(t *testing.T) {
	e := newTLSEnv(t, nil)
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		if _, err := e.handshake("a.test", &tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v}); err == nil {
			t.Errorf("TLS version %x accepted", v)
		}
	}
	// TLS 1.2 with a legacy CBC suite only is refused too.
	if _, err := e.handshake("a.test", &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12,
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}); err == nil {
		t.Error("a CBC suite was accepted")
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if _, err := e.handshake("a.test", &tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v}); err != nil {
			t.Errorf("TLS version %x: %v", v, err)
		}
	}
}

func TestTLSRedirectHTTP(t *testing.T) {
	e := newTLSEnv(t, func(c *TLSConfig) { c.RedirectHTTP, c.RedirectPort = true, 8443 })
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		host, path, want string
		code             int
	}{
		{"shop.test:8080", "/a/b?x=1&y=%20", "https://shop.test:8443/a/b?x=1&y=%20", 308},
		{"shop.test", "/", "https://shop.test:8443/", 308},
		{"[::1]:80", "/v6", "https://[::1]:8443/v6", 308},
		{"evil.test@x", "/", "", 400},
	} {
		req, _ := http.NewRequest("GET", "http://"+e.addr+tc.path, nil)
		req.Host = tc.host
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code || resp.Header.Get("Location") != tc.want {
			t.Errorf("%s%s: %d %q, want %d %q", tc.host, tc.path, resp.StatusCode, resp.Header.Get("Location"), tc.code, tc.want)
		}
	}
	// Over TLS the same request is proxied.
	resp, err := e.client(t, e.a).Get("https://a.test/a/b?x=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || decode(t, string(body)).URI != "/a/b?x=1" {
		t.Fatalf("over TLS: %d %s", resp.StatusCode, body)
	}
}

func TestTLSRedirectDefaultPort(t *testing.T) {
	e := newTLSEnv(t, func(c *TLSConfig) { c.RedirectHTTP, c.RedirectPort = true, 443 })
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", "http://"+e.addr+"/q?z", nil)
	req.Host = "shop.test:80"
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Location"); resp.StatusCode != 308 || got != "https://shop.test/q?z" {
		t.Errorf("got %d %q", resp.StatusCode, got)
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	good, _ := writeCert(t, dir, "good", 1, "a.test")
	for name, tc := range map[string]*TLSConfig{
		"no certs":     {},
		"missing file": {Certs: []CertFiles{{CertFile: filepath.Join(dir, "nope.crt"), KeyFile: good.KeyFile}}},
		"wrong key":    {Certs: []CertFiles{{CertFile: good.CertFile, KeyFile: good.CertFile}}},
		"bad port":     {Certs: []CertFiles{good}, RedirectPort: 70000},
	} {
		if _, err := newCertStore(tc, nil); err == nil || !strings.HasPrefix(err.Error(), "proxy: tls") {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

// TestTLSConcurrentReload handshakes from several goroutines while the
// files change, for the race detector.
func TestTLSConcurrentReload(t *testing.T) {
	e := newTLSEnv(t, nil)
	var wg sync.WaitGroup
	var stop atomic.Bool
	for range 4 {
		wg.Go(func() {
			for n := 0; n < 10 || !stop.Load() && n < 100000; n++ {
				if _, err := e.handshake("a.test", nil); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	// Each new pair is served before the next is written, so every reload
	// happens while the handshakes run. A later mtime makes each change
	// visible whatever the file system's clock granularity.
	for i := range 3 {
		f, c := writeCert(t, e.dir, "a", int64(10+i), "a.test")
		later := time.Now().Add(time.Duration(i+1) * time.Minute)
		for _, name := range []string{f.CertFile, f.KeyFile} {
			if err := os.Chtimes(name, later, later); err != nil {
				t.Fatal(err)
			}
		}
		eventually.NoError(t, 10*time.Second, fmt.Sprintf("certificate %d served", i+1), servesCert(e, "a.test", c))
	}
	stop.Store(true)
	wg.Wait()
}

// TestTLSWebSocket: an upgrade over TLS is tunnelled to a plain backend.
func TestTLSWebSocket(t *testing.T) {
	echoSrv := &http.Server{Handler: websocket.Handler(func(c *websocket.Conn) {
		io.Copy(c, c)
	}), ReadHeaderTimeout: 10 * time.Second}
	ln := listen(t)
	go echoSrv.Serve(ln)
	t.Cleanup(func() { echoSrv.Close() })
	e := newTLSEnv(t, nil)
	e.register("ws-1", "ws", ln.Addr().String(), 1, "urlprefix-/ws/ strip=/ws")
	e.synced()

	pool := x509.NewCertPool()
	pool.AddCert(e.a)
	raw, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{RootCAs: pool, ServerName: "a.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	cfg, err := websocket.NewConfig("wss://a.test/ws/echo", "https://a.test/")
	if err != nil {
		t.Fatal(err)
	}
	c, err := websocket.NewClient(cfg, raw)
	if err != nil {
		t.Fatalf("WebSocket handshake over TLS: %v", err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := websocket.Message.Send(c, "hello"); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := websocket.Message.Receive(c, &got); err != nil || got != "hello" {
		t.Fatalf("echo: %q, %v", got, err)
	}
}
