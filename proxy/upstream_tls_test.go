package proxy

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"log/slog"
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

	"github.com/valyala/fasthttp"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate as a PEM file
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pier test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	file := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, file: file}
}

// leaf issues a server certificate for the names and IP addresses given.
func (ca *testCA) leaf(t *testing.T, names []string, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "instance"},
		DNSNames:     names,
		IPAddresses:  ips,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// dualListener serves TLS and plain HTTP on one port, telling them apart
// by the first byte (22 starts a TLS handshake), so that one instance can
// be reached by a TLS route and a plain one.
type dualListener struct {
	net.Listener
	conf    *tls.Config
	conns   chan net.Conn
	closed  chan struct{} // closed when the listener is
	tlsSeen atomic.Int64  // TLS connections accepted (handshakes attempted)
}

func newDualListener(t *testing.T, conf *tls.Config) *dualListener {
	l := &dualListener{Listener: listen(t), conf: conf, conns: make(chan net.Conn), closed: make(chan struct{})}
	go func() {
		for {
			c, err := l.Listener.Accept()
			if err != nil {
				close(l.closed)
				return
			}
			go func() {
				br := bufio.NewReader(c)
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				first, err := br.Peek(1)
				c.SetReadDeadline(time.Time{})
				if err != nil {
					c.Close()
					return
				}
				var out net.Conn = &peekedConn{Conn: c, r: br}
				if first[0] == 22 {
					l.tlsSeen.Add(1)
					out = tls.Server(out, l.conf)
				}
				select {
				case l.conns <- out:
				case <-l.closed:
					c.Close()
				}
			}()
		}
	}()
	return l
}

func (l *dualListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// serveDual starts an echo backend on a dualListener that says in its
// answer's headers whether the request came over TLS and with what SNI.
func serveDual(t *testing.T, name string, cert tls.Certificate) (*backend, *dualListener) {
	ln := newDualListener(t, &tls.Config{Certificates: []tls.Certificate{cert}})
	b := &backend{name: name, addr: ln.Addr().String(), ln: ln}
	b.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			w.Header().Set("X-Backend-TLS", "sni="+r.TLS.ServerName)
		} else {
			w.Header().Set("X-Backend-TLS", "plain")
		}
		b.ServeHTTP(w, r)
	})}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b, ln
}

// logBuf is a log destination that tests read while the proxy writes.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestUpstreamTLS: routes reach one instance over HTTPS with the CA and
// name they give, fail with a 502 (tried once, logged, the instance not
// ejected) when the certificate does not verify, and a route without tls
// to the same instance still speaks plain HTTP.
func TestUpstreamTLS(t *testing.T) {
	ca := newTestCA(t)
	be, dl := serveDual(t, "web1", ca.leaf(t, []string{"backend.test"}, net.IPv4(127, 0, 0, 1)))
	var logs logBuf
	e := newEnv(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Routes = []Route{
			{Path: "/plain/", Service: "web", Strip: "/plain"},
			{Path: "/byip/", Service: "web", Strip: "/byip", TLS: true, TLSCAFile: ca.file},
			{Path: "/byname/", Service: "web", Strip: "/byname", TLS: true, TLSCAFile: ca.file, TLSServerName: "backend.test"},
			{Path: "/wrongname/", Service: "web", TLS: true, TLSCAFile: ca.file, TLSServerName: "other.test"},
			{Path: "/untrusted/", Service: "web", TLS: true}, // the system's roots do not know the test CA
			{Path: "/skip/", Service: "web", Strip: "/skip", TLS: true, TLSSkipVerify: true},
		}
	})
	e.register("web1", "web", be.addr, 1)

	ok := []struct{ path, backendTLS string }{
		{"/plain/x", "plain"},
		{"/byip/x", "sni="}, // an IP is verified against the certificate's IP addresses and sent as no SNI
		{"/byname/x", "sni=backend.test"},
		{"/skip/x", "sni="},
		{"/plain/x", "plain"}, // and plain HTTP again, after the TLS routes used the instance
	}
	for _, c := range ok {
		code, body, h := e.do("GET", "", c.path, nil)
		if code != 200 || decode(t, body).URI != "/x" || h.Get("X-Backend-TLS") != c.backendTLS {
			t.Errorf("%s: %d %q, backend saw %q; want 200 /x over %q", c.path, code, body, h.Get("X-Backend-TLS"), c.backendTLS)
		}
	}

	for _, path := range []string{"/wrongname/x", "/untrusted/x", "/wrongname/x"} {
		before := dl.tlsSeen.Load()
		if code, body := e.get("", path); code != 502 {
			t.Errorf("%s: %d %q, want 502", path, code, body)
		}
		if n := dl.tlsSeen.Load() - before; n != 1 {
			t.Errorf("%s: %d TLS handshakes, want 1: a failed verification is not retried on the same instance", path, n)
		}
	}
	if got := strings.Count(logs.String(), "does not match the route's TLS settings"); got != 1 {
		t.Errorf("%d warnings about the certificate, want 1 (at most one per %v):\n%s", got, certWarnEvery, logs.String())
	}
	if !strings.Contains(logs.String(), "addr="+be.addr) {
		t.Errorf("the warning does not name the instance:\n%s", logs.String())
	}

	// A bad certificate is the route's mistake, not the instance's: it
	// stays in rotation, and every route counts on the one backend.
	ms := e.bal.Pool("web").Members()
	if len(ms) != 1 || !ms[0].Backend.DownUntil().IsZero() {
		t.Fatalf("members after certificate failures: %+v", ms)
	}
	if n := ms[0].Backend.Requests(); n != uint64(len(ok)+3) {
		t.Errorf("backend counted %d requests, want %d across plain and TLS routes", n, len(ok)+3)
	}
	if code, _ := e.get("", "/plain/y"); code != 200 {
		t.Errorf("plain route after TLS failures: %d", code)
	}

	// Keep-alive: a second request over a TLS route reuses the connection.
	before := dl.tlsSeen.Load()
	for range 3 {
		if code, _ := e.get("", "/byname/y"); code != 200 {
			t.Fatalf("/byname/y: %d", code)
		}
	}
	if n := dl.tlsSeen.Load() - before; n != 0 {
		t.Errorf("%d new TLS connections for requests on a warm route, want 0", n)
	}

	// Routes show their TLS settings.
	for _, ri := range e.p.Routes() {
		if ri.Path == "/byname/" && (!ri.TLS || ri.TLSServerName != "backend.test" || ri.TLSCAFile != ca.file) {
			t.Errorf("route info: %+v", ri)
		}
	}
}

// TestUpstreamTLSToPlainInstance: a TLS route to an instance that speaks
// plain HTTP gets a 502, and, being the route's mistake, does not take the
// instance from its plain route.
func TestUpstreamTLSToPlainInstance(t *testing.T) {
	be := newBackend(t, "web1")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{
			{Path: "/plain/", Service: "web", Strip: "/plain"},
			{Path: "/tls/", Service: "web", TLS: true, TLSSkipVerify: true},
		}
	})
	e.register("web1", "web", be.addr, 1)
	for range 3 {
		if code, body := e.get("", "/tls/x"); code != 502 {
			t.Fatalf("TLS to a plain instance: %d %s", code, body)
		}
	}
	if ms := e.bal.Pool("web").Members(); len(ms) != 1 || !ms[0].Backend.DownUntil().IsZero() {
		t.Fatalf("the instance was ejected: %+v", ms)
	}
	if code, _ := e.get("", "/plain/x"); code != 200 {
		t.Errorf("plain route after the TLS route failed: %d", code)
	}
}

// TestUpstreamTLSClientAllocsNothing: finding a backend's TLS client is
// allocation-free once the first request made it, and routes with equal
// settings share it.
func TestUpstreamTLSClientAllocsNothing(t *testing.T) {
	tc := tlsCache{}
	a, err := tc.upstream(&Route{TLS: true, TLSServerName: "x.test"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := tc.upstream(&Route{TLS: true, TLSServerName: "x.test", Path: "/other"})
	c, _ := tc.upstream(&Route{TLS: true, TLSSkipVerify: true})
	if a != b || a == c {
		t.Fatalf("interning: %p %p %p", a, b, c)
	}
	if p, _ := tc.upstream(&Route{}); p != nil {
		t.Fatalf("a plain route has TLS settings %+v", p)
	}

	e := newEnv(t, nil)
	e.register("web1", "web", "127.0.0.1:1", 1)
	e.synced()
	be := e.bal.Pool("web").Members()[0].Backend
	plain, ta, tc2 := be.ClientFor(nil), be.ClientFor(a), be.ClientFor(c)
	if plain != be.Client() || ta == plain || ta == tc2 || be.ClientFor(b) != ta {
		t.Fatal("a backend's clients are not one per TLS setting")
	}
	if n := testing.AllocsPerRun(1000, func() {
		be.ClientFor(nil)
		be.ClientFor(a)
		be.ClientFor(c)
	}); n != 0 {
		t.Errorf("ClientFor allocates %v times", n)
	}
}

// TestUpstreamTLSTag: a urlprefix- tag with proto=https reaches its
// instances over TLS, as fabio's does.
func TestUpstreamTLSTag(t *testing.T) {
	ca := newTestCA(t)
	be, _ := serveDual(t, "web1", ca.leaf(t, []string{"backend.test"}))
	e := newEnv(t, nil)
	e.register("web1", "web", be.addr, 1, "urlprefix-/s strip=/s proto=https tlsskipverify=true", "urlprefix-/v proto=https", "urlprefix-/p strip=/p")
	for _, c := range []struct {
		path string
		code int
		seen string
	}{
		{"/s/x", 200, "sni="},
		{"/p/x", 200, "plain"},
		{"/v/x", 502, ""}, // verified against the system's roots, which do not know the test CA
	} {
		code, _, h := e.do("GET", "", c.path, nil)
		if code != c.code || h.Get("X-Backend-TLS") != c.seen {
			t.Errorf("%s: %d over %q, want %d over %q", c.path, code, h.Get("X-Backend-TLS"), c.code, c.seen)
		}
	}

	for tag, want := range map[string]Route{
		"urlprefix-/a proto=https":                    {Path: "/a", TLS: true},
		"urlprefix-/a proto=https tlsskipverify=true": {Path: "/a", TLS: true, TLSSkipVerify: true},
		"urlprefix-/a proto=http":                     {Path: "/a"},
	} {
		r, ok, err := ParseTag(tag)
		if !ok || err != nil || r.Path != want.Path || r.TLS != want.TLS || r.TLSSkipVerify != want.TLSSkipVerify {
			t.Errorf("ParseTag(%q) = %+v, %v, %v", tag, r, ok, err)
		}
	}
	for _, tag := range []string{"urlprefix-/a tlsskipverify=true", "urlprefix-/a proto=https tlsskipverify=yes", "urlprefix-/a proto=grpc-web"} {
		if _, _, err := ParseTag(tag); err == nil {
			t.Errorf("ParseTag(%q) accepted", tag)
		}
	}
}

// TestUpstreamTLSWebSocket: a WebSocket handshake on a TLS route is
// tunnelled over TLS to the instance.
func TestUpstreamTLSWebSocket(t *testing.T) {
	ca := newTestCA(t)
	be, dl := serveDual(t, "web1", ca.leaf(t, nil, net.IPv4(127, 0, 0, 1)))
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "web", TLS: true, TLSCAFile: ca.file}}
	})
	e.register("web1", "web", be.addr, 1)
	// The echo backend does not upgrade: its refusal comes back through
	// the tunnel, which is enough to show the tunnel spoke TLS.
	code, _, h := e.do("GET", "", "/ws", nil, "Connection", "Upgrade", "Upgrade", "websocket")
	if code != 200 || h.Get("X-Backend-TLS") != "sni=" || dl.tlsSeen.Load() != 1 {
		t.Errorf("upgrade over a TLS route: %d, backend saw %q, %d TLS connections", code, h.Get("X-Backend-TLS"), dl.tlsSeen.Load())
	}
}

func TestUpstreamTLSConfigErrors(t *testing.T) {
	ca := newTestCA(t)
	notPEM := filepath.Join(t.TempDir(), "junk.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	bal := newEnv(t, nil).bal
	for _, c := range []struct {
		r    Route
		want string
	}{
		{Route{Path: "/x", Service: "a", TLSSkipVerify: true}, "need tls: true"},
		{Route{Path: "/x", Service: "a", TLSServerName: "a.test"}, "need tls: true"},
		{Route{Path: "/x", Service: "a", TLSCAFile: ca.file}, "need tls: true"},
		{Route{Path: "/x", Service: "a", TLS: true, TLSSkipVerify: true, TLSCAFile: ca.file}, "not used with tls_skip_verify"},
		{Route{Path: "/x", Service: "a", TLS: true, TLSServerName: "a.test:443"}, "tls_server_name"},
		{Route{Host: "h.test", Path: "/x", Service: "a", TLS: true, TLSCAFile: "/nonexistent/ca.pem"}, "route h.test/x: tls_ca_file: open /nonexistent/ca.pem"},
		{Route{Path: "/x", Service: "a", TLS: true, TLSCAFile: notPEM}, "route /x: tls_ca_file: " + notPEM + ": no PEM certificate"},
	} {
		pc := DefaultConfig()
		pc.Balancer = bal
		pc.Routes = []Route{c.r}
		_, err := New(pc)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New with %+v: %v, want an error with %q", c.r, err, c.want)
		}
	}

	// KV routes take the same keys, unknown ones are still refused, and
	// one whose CA bundle cannot be read is shown as broken, not served.
	r, err := ParseRoute([]byte("path: /k/\nservice: web\ntls: true\ntls_server_name: backend.test\ntls_ca_file: " + ca.file + "\n"))
	if err != nil || !r.TLS || r.TLSServerName != "backend.test" || r.TLSCAFile != ca.file {
		t.Errorf("ParseRoute with TLS keys: %+v, %v", r, err)
	}
	if _, err := ParseRoute([]byte("path: /k/\nservice: web\ntls: true\ntls_verify: false\n")); err == nil || !strings.Contains(err.Error(), "unknown key") {
		t.Errorf("ParseRoute with an unknown TLS key: %v", err)
	}
	e := newEnv(t, nil)
	e.reg.KVPut(KVRoutePrefix+"k", []byte("path: /k/\nservice: web\ntls: true\ntls_ca_file: /nonexistent/ca.pem\n"), 0, nil)
	e.synced()
	shown := e.p.Routes()
	if len(shown) != 1 || shown[0].Key != KVRoutePrefix+"k" || !strings.Contains(shown[0].Error, "tls_ca_file") {
		t.Errorf("a KV route with a missing CA bundle shows as %+v", shown)
	}
	if code, _ := e.get("", "/k/"); code != 404 {
		t.Errorf("a KV route with a missing CA bundle was served: %d", code)
	}
}

// BenchmarkProxyUpstreamTLS is BenchmarkProxy with the instance reached
// over TLS. It reports two allocations per request more than
// BenchmarkProxy, both in crypto/tls (each record read heap-allocates a
// small reader in tls.Conn.readFromUntil): one on the proxy's side, one on
// the instance's, which runs in the same process. pier's own path (the
// client chosen by ClientFor, the dial) adds none once connections are
// warm.
func BenchmarkProxyUpstreamTLS(b *testing.B) {
	t := &testing.T{}
	ca := newTestCA(t)
	cert := ca.leaf(t, nil, net.IPv4(127, 0, 0, 1))
	ln := tls.NewListener(listen(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.WriteString("hello") }}
	go srv.Serve(ln)
	defer srv.Shutdown()
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api", TLS: true, TLSCAFile: ca.file}}
	})
	defer e.close()
	e.register("api-1", "api", ln.Addr().String(), 1)
	benchGets(b, e.addr)
}
