package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/lb"
)

// echoServer is a TCP instance: it writes its name and a newline on every
// connection, then echoes what it reads.
type echoServer struct {
	name  string
	addr  string
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newEchoServer(t *testing.T, name string, conf *tls.Config) *echoServer {
	t.Helper()
	ln := listen(t)
	s := &echoServer{name: name, addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]bool{}}
	if conf != nil {
		ln = tls.NewListener(ln, conf)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() { s.mu.Lock(); delete(s.conns, c); s.mu.Unlock(); c.Close() }()
				if _, err := io.WriteString(c, name+"\n"); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

// open is the number of connections the server has open.
func (s *echoServer) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// stop closes the listener and every connection.
func (s *echoServer) stop() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// tcpEnv is an env with a TCP proxy running.
type tcpEnv struct {
	*env
	tcp *TCPProxy
	reg *prometheus.Registry
}

func newTCPEnv(t *testing.T, tweak func(*Config), cfg TCPConfig) *tcpEnv {
	t.Helper()
	return newTCPEnvLB(t, nil, tweak, cfg)
}

// newTCPEnvLB is newTCPEnv with the balancer's config tweaked too.
func newTCPEnvLB(t *testing.T, lbTweak func(*lb.Config), tweak func(*Config), cfg TCPConfig) *tcpEnv {
	t.Helper()
	reg := prometheus.NewRegistry()
	e := newEnvLB(t, lbTweak, func(c *Config) {
		c.Registerer = reg
		if tweak != nil {
			tweak(c)
		}
	})
	tp, err := e.p.NewTCP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := tp.Run(e.ctx); err != nil {
			t.Errorf("TCPProxy.Run: %v", err)
		}
	}()
	t.Cleanup(func() { e.close(); <-done })
	return &tcpEnv{env: e, tcp: tp, reg: reg}
}

// addr is where the proxy listens for the route given listen.
func (e *tcpEnv) addr(listen string) string {
	e.t.Helper()
	var a string
	eventually.True(e.t, 10*time.Second, "the proxy listens for "+listen, func() bool {
		a = e.tcp.Addrs()[listen]
		return a != ""
	})
	return a
}

// dialEcho connects through the proxy and returns the connection and the
// name of the instance that answered.
func dialEcho(t *testing.T, addr string) (net.Conn, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, readName(t, c)
}

func readName(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the instance's name: %v (got %q)", err, line)
	}
	c.SetReadDeadline(time.Time{})
	return strings.TrimSpace(line)
}

// roundTrip sends msg and checks it comes back.
func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q, %v; want %q", buf, err, msg)
	}
}

// closedByPeer reports whether the proxy ended c (EOF or reset on read).
func closedByPeer(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestTCPRouteLeastConnAndEcho(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo"}}})
	a, b := newEchoServer(t, "A", nil), newEchoServer(t, "B", nil)
	e.register("a", "echo", a.addr, 1)
	e.register("b", "echo", b.addr, 1)
	e.synced()
	addr := e.addr("127.0.0.1:0")

	// Connections held open spread one by one: each goes to the instance
	// with the fewest.
	seen := map[string]int{}
	var conns []net.Conn
	for i := 0; i < 6; i++ {
		c, name := dialEcho(t, addr)
		seen[name]++
		conns = append(conns, c)
		if d := seen["A"] - seen["B"]; d > 1 || d < -1 {
			t.Fatalf("after %d connections: %v, want least-connections", i+1, seen)
		}
	}
	// A connection keeps its instance: a large echo both ways.
	big := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	done := make(chan error, 1)
	go func() { _, err := io.WriteString(conns[0], big); done <- err }()
	got := make([]byte, len(big))
	conns[0].SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(conns[0], got); err != nil || string(got) != big {
		t.Fatalf("1 MiB echo: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		c.Close()
	}
	eventually.True(t, 10*time.Second, "closed connections leave the instances", func() bool {
		return a.open() == 0 && b.open() == 0
	})
	route := "127.0.0.1:0"
	if n := testutil.ToFloat64(e.tcp.met.connsVec.WithLabelValues(route, "echo")); n != 6 {
		t.Errorf("tcp_connections_total = %v, want 6", n)
	}
	if n := testutil.ToFloat64(e.tcp.met.bytesVec.WithLabelValues(route, "echo", "in")); n < float64(len(big)) {
		t.Errorf("tcp_bytes_total in = %v, want at least %d", n, len(big))
	}
	eventually.True(t, 10*time.Second, "the open gauge returns to 0", func() bool {
		return testutil.ToFloat64(e.tcp.met.openVec.WithLabelValues(route, "echo")) == 0
	})
}

func TestTCPRouteInstanceFailure(t *testing.T) {
	e := newTCPEnv(t, func(c *Config) { c.MaxFails = 1; c.FailTimeout = time.Minute },
		TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo"}}})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1)
	e.register("dead", "echo", deadPort(t), 1)
	e.synced()
	addr := e.addr("127.0.0.1:0")
	// Every connection reaches A: a refused connect moves on to the next
	// instance, and ejects the dead one.
	for i := 0; i < 6; i++ {
		c, name := dialEcho(t, addr)
		if name != "A" {
			t.Fatalf("connection %d answered by %q", i, name)
		}
		roundTrip(t, c, "ping\n")
		c.Close()
	}
	if n := testutil.ToFloat64(e.tcp.met.failuresVec.WithLabelValues("127.0.0.1:0", "echo")); n != 1 {
		t.Errorf("tcp_connect_failures_total = %v, want 1 (then the instance is out for fail_timeout)", n)
	}
	// A connection open when its instance dies ends; the next goes to a
	// live one, or none: with A gone too the client is closed at once.
	c, _ := dialEcho(t, addr)
	a.stop()
	eventually.True(t, 10*time.Second, "the connection of a dead instance ends", func() bool { return closedByPeer(c) })
	c2, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("no instance up: read %d, %v; want the connection closed", n, err)
	}
	if n := testutil.ToFloat64(e.tcp.met.unavailableVec.WithLabelValues("127.0.0.1:0", "echo")); n != 1 {
		t.Errorf("tcp_unavailable_total = %v, want 1", n)
	}
}

func TestTCPRouteDraining(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{
		{Listen: "127.0.0.1:0", Service: "echo"},
		{Listen: "127.0.0.2:0", Service: "echo", DrainTimeout: 300 * time.Millisecond},
	}})
	a, b := newEchoServer(t, "A", nil), newEchoServer(t, "B", nil)
	e.register("a", "echo", a.addr, 1)
	e.synced()
	keep, _ := dialEcho(t, e.addr("127.0.0.1:0")) // no drain timeout
	cut, _ := dialEcho(t, e.addr("127.0.0.2:0"))  // 300ms
	e.register("b", "echo", b.addr, 1)
	e.deregister("a")
	e.synced()
	// New connections go to B only; the open ones stay on A.
	for i := 0; i < 3; i++ {
		if _, name := dialEcho(t, e.addr("127.0.0.1:0")); name != "B" {
			t.Fatalf("after A left: connection to %q", name)
		}
	}
	eventually.True(t, 10*time.Second, "the drain timeout ends the connection", func() bool { return closedByPeer(cut) })
	roundTrip(t, keep, "still here\n")
	// Counted just after the close the client saw.
	eventually.True(t, 10*time.Second, "tcp_ended_total{reason=drained} is 1", func() bool {
		return testutil.ToFloat64(e.tcp.met.endedVec.WithLabelValues("127.0.0.2:0", "echo", "drained")) == 1
	})
}

func TestTCPRouteIdleTimeout(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo", IdleTimeout: 400 * time.Millisecond}}})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1)
	e.synced()
	c, _ := dialEcho(t, e.addr("127.0.0.1:0"))
	// Busy for longer than the idle timeout: not ended.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		roundTrip(t, c, "x")
		time.Sleep(50 * time.Millisecond)
	}
	eventually.True(t, 10*time.Second, "an idle connection ends", func() bool { return closedByPeer(c) })
	eventually.True(t, 10*time.Second, "tcp_ended_total{reason=idle} is 1", func() bool {
		return testutil.ToFloat64(e.tcp.met.endedVec.WithLabelValues("127.0.0.1:0", "echo", "idle")) == 1
	})
	time.Sleep(100 * time.Millisecond) // and stays 1: the other direction's timeout does not count it again
	if n := testutil.ToFloat64(e.tcp.met.endedVec.WithLabelValues("127.0.0.1:0", "echo", "idle")); n != 1 {
		t.Errorf("tcp_ended_total{reason=idle} = %v, want 1", n)
	}
}

func TestTCPRouteFromTag(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{TagHost: "127.0.0.1"})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1, "urlprefix-:0 proto=tcp")
	e.synced()
	c, name := dialEcho(t, e.addr("127.0.0.1:0"))
	if name != "A" {
		t.Fatalf("answered by %q", name)
	}
	roundTrip(t, c, "hello\n")
	// The HTTP routes leave the tag alone.
	if code, _ := e.get("", "/"); code != 404 {
		t.Errorf("HTTP through a TCP tag: %d, want 404", code)
	}
	e.deregister("a")
	e.synced()
	eventually.True(t, 10*time.Second, "the tag's listener closes", func() bool { return e.tcp.Addrs()["127.0.0.1:0"] == "" })
}

func TestTCPRouteValidate(t *testing.T) {
	for _, tc := range []struct {
		r    TCPRoute
		want string
	}{
		{TCPRoute{Listen: ":5432"}, "service: required"},
		{TCPRoute{Service: "pg"}, "listen: required"},
		{TCPRoute{Listen: "5432", Service: "pg"}, `listen "5432": want host:port`},
		{TCPRoute{Listen: "db:5432", Service: "pg"}, `"db" is not an IP address`},
		{TCPRoute{Listen: ":70000", Service: "pg"}, `port "70000"`},
		{TCPRoute{Listen: ":5432", Service: "pg", IdleTimeout: -1}, "idle_timeout"},
		{TCPRoute{SNI: "a b", Service: "pg"}, `sni "a b"`},
	} {
		err := tc.r.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.r, err, tc.want)
		}
	}
	for _, tc := range []struct{ tag, want, errWant string }{
		{"urlprefix-:5432 proto=tcp", "10.0.0.1:5432", ""},
		{"urlprefix-127.0.0.1:5432 proto=tcp", "127.0.0.1:5432", ""},
		{"urlprefix-db.example.com proto=tcp+sni", "sni db.example.com", ""},
		{"urlprefix-db.example.com/ proto=tcp+sni", "sni db.example.com", ""},
		{"urlprefix-/api proto=tcp", "", "a proto=tcp route is :port"},
		{"urlprefix-:5432 proto=tcp strip=/x", "", "unknown option"},
		{"urlprefix-db:1 proto=tcp+sni", "", "a host name"},
	} {
		r, ok, err := ParseTCPTag(tc.tag, "10.0.0.1")
		if !ok {
			t.Errorf("%q: not read as a TCP tag", tc.tag)
			continue
		}
		got := r.Listen
		if r.SNI != "" {
			got = "sni " + r.SNI
		}
		if tc.errWant != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errWant) {
				t.Errorf("%q: %v, want %q", tc.tag, err, tc.errWant)
			}
		} else if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.tag, got, err, tc.want)
		}
	}
	if _, ok, _ := ParseTCPTag("urlprefix-/api", ""); ok {
		t.Error("an HTTP tag read as a TCP one")
	}
}

// sniEnv is a front door with a terminating TLS listener (a certificate for
// pier.test) wrapped for passthrough, and two TLS echo instances for
// a.test and b.test.
type sniEnv struct {
	*tcpEnv
	tlsAddr string
	roots   *x509.CertPool
}

func newSNIEnv(t *testing.T, cfg TCPConfig) *sniEnv {
	t.Helper()
	dir := t.TempDir()
	fp, pc := writeCert(t, dir, "pier", 1, "pier.test")
	e := newTCPEnv(t, func(c *Config) {
		c.TLS = &TLSConfig{Certs: []CertFiles{fp}}
		c.Routes = []Route{{Path: "/", Service: "web"}}
	}, cfg)
	ln := listen(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.p.RunTLS(e.ctx, e.tcp.WrapTLS(ln)); err != nil {
			t.Errorf("RunTLS: %v", err)
		}
	}()
	t.Cleanup(func() { e.close(); <-done })
	ca := newTestCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	roots.AddCert(pc)
	for _, n := range []string{"a", "b"} {
		s := newEchoServer(t, strings.ToUpper(n), &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, []string{n + ".test"})}})
		e.register(n, "svc-"+n, s.addr, 1, "urlprefix-"+n+".test proto=tcp+sni")
	}
	web := newBackend(t, "web1")
	e.register("web1", "web", web.addr, 1)
	e.synced()
	return &sniEnv{tcpEnv: e, tlsAddr: ln.Addr().String(), roots: roots}
}

func (e *sniEnv) dialTLS(addr, name string) (*tls.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: e.roots})
}

func TestSNIPassthrough(t *testing.T) {
	// c.test is a config route to b's service; the tags name a.test and
	// b.test, and pier.test, which pier holds a certificate for.
	e := newSNIEnv(t, TCPConfig{Routes: []TCPRoute{{SNI: "C.test", Service: "svc-b"}}})
	e.register("own-1", "own", "127.0.0.1:1", 1, "urlprefix-pier.test proto=tcp+sni")
	e.synced()
	c, err := e.dialTLS(e.tlsAddr, "c.test")
	if err == nil {
		// b's certificate names b.test only: the client refuses it for
		// c.test, after the bytes went through to b.
		c.Close()
		t.Fatal("c.test verified against b's certificate")
	}
	if !strings.Contains(err.Error(), "b.test") {
		t.Fatalf("c.test: %v; want b's certificate (for b.test) refused", err)
	}
	// The instances' own certificates verify: TLS is theirs, end to end.
	for _, n := range []string{"a", "b"} {
		var c *tls.Conn
		eventually.True(t, 10*time.Second, "passthrough to "+n+".test", func() bool {
			var err error
			c, err = e.dialTLS(e.tlsAddr, n+".test")
			return err == nil
		})
		if got := readName(t, c); got != strings.ToUpper(n) {
			t.Fatalf("%s.test answered by %q", n, got)
		}
		roundTrip(t, c, "through "+n+"\n")
		c.Close()
	}
	// A name pier holds a certificate for is terminated and proxied as HTTP.
	tr := &httpsClient{roots: e.roots, addr: e.tlsAddr}
	if code, body := tr.get(t, "https://pier.test/x"); code != 200 || !strings.Contains(body, "web1") {
		t.Fatalf("pier.test over the terminating side: %d %q", code, body)
	}
	// A name with no route and no certificate is terminated with the first
	// certificate: the handshake fails verification for that name.
	if c, err := e.dialTLS(e.tlsAddr, "d.test"); err == nil {
		c.Close()
		t.Fatal("d.test verified: the first certificate does not name it")
	} else if !strings.Contains(err.Error(), "pier.test") {
		t.Fatalf("d.test: %v; want pier's certificate (for pier.test) refused", err)
	}
}

func TestSNIPassthroughOnlyListener(t *testing.T) {
	e := newSNIEnv(t, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", SNI: "a.test", Service: "svc-a"}}})
	addr := e.addr("127.0.0.1:0")
	c, err := e.dialTLS(addr, "a.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := readName(t, c); got != "A" {
		t.Fatalf("answered by %q", got)
	}
	c.Close()
	// No SNI (an IP address as server name sends none), an unknown name,
	// and plain bytes: closed, logged, counted.
	if c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "127.0.0.1", InsecureSkipVerify: true}); err == nil {
		c.Close()
		t.Fatal("a ClientHello without SNI was served")
	}
	if c, err := e.dialTLS(addr, "b.test"); err == nil {
		c.Close()
		t.Fatal("a name routed only on the TLS listener was served on the passthrough-only one")
	}
	pc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(pc, "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := pc.Read(make([]byte, 1)); n != 0 {
		t.Fatal("plain HTTP on a passthrough-only listener got an answer")
	}
	pc.Close()
	ln := e.tcp.Addrs()["127.0.0.1:0"]
	for _, reason := range []string{"no_sni", "unknown_sni", "bad_hello"} {
		if n := testutil.ToFloat64(e.tcp.met.refusedVec.WithLabelValues(ln, reason)); n != 1 {
			t.Errorf("tcp_passthrough_refused_total{reason=%s} = %v, want 1", reason, n)
		}
	}
}

// httpsClient sends every request to addr, trusting roots.
type httpsClient struct {
	roots *x509.CertPool
	addr  string
}

func (h *httpsClient) get(t *testing.T, url string) (int, string) {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: h.roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, h.addr)
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
