package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// h2cClient speaks HTTP/2 with prior knowledge to addr, whatever the URL.
func h2cClient(t *testing.T, addr string) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// h2TLSClient speaks HTTP/2 over TLS (ALPN h2 only) to addr.
func h2TLSClient(t *testing.T, addr string, roots ...*x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	var protos http.Protocols
	protos.SetHTTP2(true)
	tr := &http.Transport{Protocols: &protos, TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func newH2CEnv(t *testing.T, tweak func(*Config)) *env {
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
		if tweak != nil {
			tweak(c)
		}
	})
	for _, n := range []string{"api1", "api2"} {
		be := newBackend(t, n)
		e.register(n, "api", be.addr, 1)
	}
	e.synced()
	return e
}

func TestH2CPriorKnowledge(t *testing.T) {
	e := newH2CEnv(t, nil)
	c := h2cClient(t, e.addr)
	seen := map[string]bool{}
	for i := range 20 {
		resp, err := c.Post("http://shop.test/api/users?id=7", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
			t.Fatalf("%d: %s %d %s %v", i, resp.Proto, resp.StatusCode, body, resp.Header)
		}
		ec := decode(t, string(body))
		seen[ec.Name] = true
		if ec.URI != "/users?id=7" || ec.Host != "shop.test" || ec.Body != 5 || ec.Method != "POST" {
			t.Fatalf("the instance got %+v", ec)
		}
		if ec.Header.Get("X-Forwarded-For") != "127.0.0.1" || ec.Header.Get("X-Real-Ip") != "127.0.0.1" ||
			ec.Header.Get("X-Forwarded-Proto") != "http" || ec.Header.Get("X-Request-Id") == "" {
			t.Fatalf("forwarding headers: %v", ec.Header)
		}
	}
	if !seen["api1"] || !seen["api2"] {
		t.Errorf("20 requests reached only %v", seen)
	}
	// HTTP/1.1 on the same listener still works.
	resp, err := e.http.Get("http://" + e.addr + "/api/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 1 || resp.StatusCode != 200 {
		t.Fatalf("HTTP/1.1 next to h2c: %s %d", resp.Proto, resp.StatusCode)
	}
	// HEAD keeps the instance's Content-Length.
	resp, err = c.Head("http://x/api/dl?size=1234")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 1234 {
		t.Fatalf("HEAD: %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
	}
	// No route and a big streamed download over HTTP/2.
	resp, err = c.Get("http://x/none")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("no route: %d", resp.StatusCode)
	}
	resp, err = c.Get("http://x/api/dl?size=10000000")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 10000000 || resp.ContentLength != 10000000 {
		t.Fatalf("download: %d bytes (Content-Length %d), %v", n, resp.ContentLength, err)
	}
}

func TestH2CDisabledByDefault(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	c := h2cClient(t, e.addr)
	if resp, err := c.Get("http://x/"); err == nil {
		resp.Body.Close()
		t.Fatalf("h2c without proxy.h2c: %s %d", resp.Proto, resp.StatusCode)
	}
}

func TestH2OverTLS(t *testing.T) {
	e := newTLSEnv(t, nil)
	c := h2TLSClient(t, e.tlsAddr, e.a)
	resp, err := c.Get("https://a.test/x?y=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("%s %d %s", resp.Proto, resp.StatusCode, body)
	}
	ec := decode(t, string(body))
	if ec.URI != "/x?y=1" || ec.Header.Get("X-Forwarded-Proto") != "https" || ec.Host != "a.test" {
		t.Fatalf("the instance got %+v", ec)
	}
	// An HTTP/1.1 client on the same listener is served by fasthttp.
	resp, err = e.client(t, e.a).Get("https://a.test/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 1 || resp.StatusCode != 200 {
		t.Fatalf("HTTP/1.1 over TLS: %s %d", resp.Proto, resp.StatusCode)
	}
}

// TestH2Curl drives curl, a client that is not Go's, through both ways in.
func TestH2Curl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	e := newTLSEnv(t, nil)
	e.p.cfg.H2C = false // the plain listener of this env was not split; curl below uses TLS
	out, err := exec.Command("curl", "-sS", "--http2", "-k", "--resolve", "a.test:"+portOf(e.tlsAddr)+":127.0.0.1",
		"-o", "/dev/null", "-w", "%{http_version} %{http_code}", "https://a.test:"+portOf(e.tlsAddr)+"/x").CombinedOutput()
	if err != nil || string(out) != "2 200" {
		t.Fatalf("curl --http2: %q %v", out, err)
	}
	h := newH2CEnv(t, nil)
	out, err = exec.Command("curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
		"http://"+h.addr+"/api/x").CombinedOutput()
	if err != nil || string(out) != "2 200" {
		t.Fatalf("curl --http2-prior-knowledge: %q %v", out, err)
	}
	out, err = exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "http://"+h.addr+"/api/x").CombinedOutput()
	if err != nil || string(out) != "1.1 200" {
		t.Fatalf("curl over HTTP/1.1 to an h2c listener: %q %v", out, err)
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// frame appends one HTTP/2 frame.
func frame(dst []byte, typ, flags byte, stream uint32, payload []byte) []byte {
	n := len(payload)
	dst = append(dst, byte(n>>16), byte(n>>8), byte(n), typ, flags)
	dst = binary.BigEndian.AppendUint32(dst, stream&0x7fffffff)
	return append(dst, payload...)
}

const (
	frameData         = 0
	frameHeaders      = 1
	frameRSTStream    = 3
	frameSettings     = 4
	frameGoAway       = 7
	frameContinuation = 9

	flagEndStream  = 1
	flagEndHeaders = 4
)

// rawH2 opens an h2c connection and sends the preface and empty settings.
func rawH2(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	b := append([]byte(h2Preface), frame(nil, frameSettings, 0, 0, nil)...)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	return c
}

// readUntilGoAway reads frames until a GOAWAY (returning its error code)
// or the end of the connection (-1).
func readUntilGoAway(c net.Conn) int {
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return -1
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		p := make([]byte, n)
		if _, err := io.ReadFull(c, p); err != nil {
			return -1
		}
		if hdr[3] == frameGoAway && n >= 8 {
			return int(binary.BigEndian.Uint32(p[4:8]))
		}
	}
}

// getHeaders is an HPACK block for GET /api/x on host x, literal fields
// without indexing so that no table state is needed.
func getHeaders(path string) []byte {
	lit := func(dst []byte, k, v string) []byte {
		dst = append(dst, 0x00, byte(len(k)))
		dst = append(dst, k...)
		dst = append(dst, byte(len(v)))
		return append(dst, v...)
	}
	var b []byte
	b = lit(b, ":method", "GET")
	b = lit(b, ":scheme", "http")
	b = lit(b, ":path", path)
	b = lit(b, ":authority", "x")
	return b
}

// TestH2MalformedFrames sends frames that break the protocol: each closes
// its connection with a GOAWAY, and the proxy serves the next client.
func TestH2MalformedFrames(t *testing.T) {
	e := newH2CEnv(t, nil)
	cases := map[string][]byte{
		"DATA on stream 0":                           frame(nil, frameData, 0, 0, []byte("x")),
		"HEADERS on stream 0":                        frame(nil, frameHeaders, flagEndHeaders, 0, getHeaders("/api/x")),
		"even stream id":                             frame(nil, frameHeaders, flagEndHeaders|flagEndStream, 2, getHeaders("/api/x")),
		"bad HPACK":                                  frame(nil, frameHeaders, flagEndHeaders|flagEndStream, 1, []byte{0xff, 0xff, 0xff, 0xff, 0xff}),
		"SETTINGS of odd length":                     frame(nil, frameSettings, 0, 0, []byte{0, 1, 0}),
		"CONTINUATION out of place":                  frame(nil, frameContinuation, flagEndHeaders, 1, getHeaders("/api/x")),
		"oversized frame":                            append([]byte{0xff, 0xff, 0xff, frameData, 0, 0, 0, 0, 1}, make([]byte, 100)...),
		"unknown type, then WINDOW_UPDATE of 1 byte": []byte("\x00\x00\x04\x99\x00\x00\x00\x00\x00abcd\x00\x00\x01\x08\x00\x00\x00\x00\x00\x01"),
	}
	for name, b := range cases {
		c := rawH2(t, e.addr)
		if _, err := c.Write(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t0 := time.Now()
		code := readUntilGoAway(c)
		t.Logf("%s: GOAWAY %d after %v", name, code, time.Since(t0))
		if code == 0 {
			t.Errorf("%s: GOAWAY with NO_ERROR", name)
		}
		c.Close()
	}
	resp, err := h2cClient(t, e.addr).Get("http://x/api/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after malformed frames: %d", resp.StatusCode)
	}
}

// TestH2ContinuationFlood sends one header block in endless CONTINUATION
// frames (CVE-2024-27316): the proxy must end the connection once the
// block passes max_header_list_size, not buffer it without bound.
func TestH2ContinuationFlood(t *testing.T) {
	e := newH2CEnv(t, func(c *Config) { c.HTTP2.MaxHeaderListSize = 4 << 10 })
	c := rawH2(t, e.addr)
	if _, err := c.Write(frame(nil, frameHeaders, 0, 1, getHeaders("/api/x"))); err != nil {
		t.Fatal(err)
	}
	// Fields of 1 KiB each, 10 MiB in all unless the proxy stops reading.
	field := append([]byte{0x00, 3, 'x', '-', 'a', 0x7f, 0x81, 0x07}, bytes.Repeat([]byte("a"), 1024)...) // value length 1024 (7-bit prefix, 127+897)
	stopped := make(chan int, 1)
	go func() { stopped <- readUntilGoAway(c) }()
	sent := 0
	for sent < 10<<20 {
		if _, err := c.Write(frame(nil, frameContinuation, 0, 1, field)); err != nil {
			break // the proxy closed the connection
		}
		sent += len(field)
		select {
		case code := <-stopped:
			if code == 0 {
				t.Fatalf("GOAWAY NO_ERROR after %d bytes", sent)
			}
			t.Logf("CONTINUATION flood: the connection ended (GOAWAY code %d) after %d bytes of one header block", code, sent)
			return
		default:
		}
	}
	select {
	case code := <-stopped:
		t.Logf("CONTINUATION flood: the connection ended (GOAWAY code %d) after %d bytes of one header block", code, sent)
	case <-time.After(10 * time.Second):
		t.Fatalf("the connection still open after %d bytes of one header block", sent)
	}
	if sent >= 10<<20 {
		t.Fatalf("the proxy read %d bytes of one header block", sent)
	}
}

// TestH2RapidReset opens and at once cancels streams far faster than
// they finish (CVE-2023-44487): the instance never sees more requests at
// once than max_concurrent_streams, and the connection is ended.
func TestH2RapidReset(t *testing.T) {
	var inflight, peak atomic.Int64
	release := make(chan struct{})
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.HTTP2.MaxConcurrentStreams = 10
		c.Routes = []Route{{Path: "/", Service: "slow"}}
	})
	be := newBackend(t, "slow")
	be.delay = func(*http.Request) {
		n := inflight.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-release:
		case <-time.After(5 * time.Second):
		}
		inflight.Add(-1)
	}
	e.register("slow1", "slow", be.addr, 1)
	e.synced()
	c := rawH2(t, e.addr)
	var b []byte
	for id := uint32(1); id < 2000; id += 2 {
		b = frame(b, frameHeaders, flagEndHeaders|flagEndStream, id, getHeaders("/slow"))
		b = frame(b, frameRSTStream, 0, id, []byte{0, 0, 0, 8}) // CANCEL
	}
	c.Write(b) // may fail part way: the proxy is allowed to hang up
	code := readUntilGoAway(c)
	// The streams that got a handler before the reset reach the instance;
	// wait for them, then for any that would come after.
	eventually.True(t, 10*time.Second, "a request at the instance", func() bool { return be.hits.Load() > 0 })
	time.Sleep(200 * time.Millisecond) // bounded: more requests, if any were let through, would arrive meanwhile
	close(release)
	if p := peak.Load(); p > 10 {
		t.Errorf("%d requests reached the instance at once; max_concurrent_streams is 10", p)
	}
	t.Logf("rapid reset: connection ended with GOAWAY code %d; %d requests reached the instance, at most %d at once", code, be.hits.Load(), peak.Load())
	if code != 11 {
		t.Errorf("GOAWAY code %d, want ENHANCE_YOUR_CALM (11)", code)
	}
	// The proxy still serves.
	eventually.True(t, 10*time.Second, "the instance idle", func() bool { return inflight.Load() == 0 })
	resp, err := h2cClient(t, e.addr).Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestH2Drain: at shutdown an HTTP/2 stream in progress finishes (the
// connection gets a GOAWAY, not a reset), as an HTTP/1.1 request does.
func TestH2Drain(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.Routes = []Route{{Path: "/", Service: "slow"}}
	})
	var inflight atomic.Int64
	be := newBackend(t, "slow")
	be.delay = func(*http.Request) { inflight.Add(1); time.Sleep(time.Second) }
	e.register("slow1", "slow", be.addr, 1)
	e.synced()
	c := h2cClient(t, e.addr)
	type answer struct {
		code int
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := c.Get("http://x/slow")
		if err != nil {
			done <- answer{0, err}
			return
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- answer{resp.StatusCode, err}
	}()
	eventually.True(t, 10*time.Second, "the request at the instance", func() bool { return inflight.Load() == 1 })
	e.close()
	if a := <-done; a.err != nil || a.code != 200 {
		t.Fatalf("a stream in progress at shutdown: %d %v", a.code, a.err)
	}
}
