//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// The event loop's fast path (evloop_fast_linux.go) and its hand-overs to
// goroutines, with real sockets on loopback. They run on both engines (the
// goroutine engine must answer the same); on the event loop they also
// check which path served the requests.

// fastCounts is the requests the loop answered itself and those it handed
// to goroutines; zeros on the goroutine engine.
func fastCounts(p *Proxy) (onLoop, handed uint64) {
	if p.loops == nil {
		return 0, 0
	}
	for _, l := range p.loops.ls {
		onLoop += l.fast.onLoop.Load()
		handed += l.fast.handed.Load()
	}
	return onLoop, handed
}

func dialProxy(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

// readAnswer reads one response (to a request with method) and its body.
func readAnswer(t *testing.T, br *bufio.Reader, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading a body: %v", err)
	}
	return resp, string(b)
}

// rawBackend is a TCP server that reads request heads (requests without a
// body) and answers each with answer(the request line); close ends the
// connection after each answer, without saying so.
type rawBackend struct {
	ln    net.Listener
	addr  string
	conns sync.WaitGroup
}

func newRawBackend(t *testing.T, answer func(line string) string, closeEach bool) *rawBackend {
	t.Helper()
	ln := listen(t)
	rb := &rawBackend{ln: ln, addr: ln.Addr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rb.conns.Add(1)
			go func() {
				defer rb.conns.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					for {
						h, err := br.ReadString('\n')
						if err != nil {
							return
						}
						if h == "\r\n" {
							break
						}
					}
					if _, err := io.WriteString(c, answer(strings.TrimSpace(line))); err != nil || closeEach {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done; rb.conns.Wait() })
	return rb
}

// TestFastPathPipelined: requests sent in one write, one with a body, are
// answered in order on one connection, by the loop itself.
func TestFastPathPipelined(t *testing.T) {
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)
	e.synced()
	on0, h0 := fastCounts(e.p)
	c, br := dialProxy(t, e.addr)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+
		"HEAD /c?size=100 HTTP/1.1\r\nHost: x\r\n\r\n"+
		"GET /d HTTP/1.1\r\nHost: x\r\n\r\n")
	for _, want := range []struct {
		method, uri string
		body        int64
	}{{"GET", "/a", 0}, {"POST", "/b", 3}, {"HEAD", "/c?size=100", 0}, {"GET", "/d", 0}} {
		resp, body := readAnswer(t, br, want.method)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %q", want.method, want.uri, resp.StatusCode, body)
		}
		if want.method == "HEAD" {
			if resp.ContentLength != 100 || body != "" {
				t.Errorf("HEAD: Content-Length %d, body %q; want 100 and none", resp.ContentLength, body)
			}
			continue
		}
		got := decode(t, body)
		if got.Method != want.method || got.URI != want.uri || got.Body != want.body {
			t.Errorf("answer %+v, want %s %s with %d body bytes", got, want.method, want.uri, want.body)
		}
		if xff := got.Header.Get("X-Forwarded-For"); xff != "127.0.0.1" || got.Header.Get("X-Real-Ip") != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q, X-Real-IP %q", xff, got.Header.Get("X-Real-Ip"))
		}
	}
	if on, h := fastCounts(e.p); testEngine == EngineEventLoop && (on-on0 < 4 || h != h0) {
		t.Errorf("on the loop: %d, handed to goroutines: %d; want 4 and 0", on-on0, h-h0)
	}
}

// TestFastPathResponses: responses of every framing reach the client
// whole, and the connection serves the next request after each: small ones
// from the loop, the rest (large, with trailers, to the backend's close)
// streamed by a goroutine.
func TestFastPathResponses(t *testing.T) {
	raw := newRawBackend(t, func(line string) string {
		switch {
		case strings.Contains(line, "/chunked"):
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
		case strings.Contains(line, "/trailer"):
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
		}
		return "HTTP/1.1 204 No Content\r\n\r\n"
	}, false)
	closing := newRawBackend(t, func(string) string { return "HTTP/1.1 200 OK\r\n\r\nto the close" }, true)
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/raw/", Service: "raw"}, {Path: "/close/", Service: "closing"}, {Path: "/", Service: "api"}}
	})
	e.register("api-1", "api", b.addr, 1)
	e.register("raw-1", "raw", raw.addr, 1)
	e.register("closing-1", "closing", closing.addr, 1)
	e.synced()
	for _, tc := range []struct {
		path, body string
		size       int
		streamed   bool
	}{
		{path: "/raw/chunked", body: "hello world"},
		{path: "/raw/trailer", body: "hello world", streamed: true},
		{path: "/raw/empty"},
		{path: "/close/x", body: "to the close", streamed: true},
		{path: "/big?size=30000", size: 30000},
		{path: "/big?size=300000", size: 300000, streamed: true},
		{path: "/big?size=300000&chunked=1", size: 300000, streamed: true},
	} {
		// A connection of its own: after a streamed response a goroutine
		// serves the connection until it parks, and would serve the next.
		c, br := dialProxy(t, e.addr)
		_, h0 := fastCounts(e.p)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", tc.path)
		resp, body := readAnswer(t, br, "GET")
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s: %d %q", tc.path, resp.StatusCode, body)
		}
		if tc.size > 0 && (len(body) != tc.size || strings.Trim(body, "\x00") != "") {
			t.Errorf("%s: %d bytes, want %d zeros", tc.path, len(body), tc.size)
		} else if tc.size == 0 && body != tc.body {
			t.Errorf("%s: body %q, want %q", tc.path, body, tc.body)
		}
		if _, h := fastCounts(e.p); testEngine == EngineEventLoop && (h > h0) != tc.streamed {
			t.Errorf("%s: handed to a goroutine: %v, want %v", tc.path, h > h0, tc.streamed)
		}
		// The connection goes on.
		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 || decode(t, body).URI != "/next" {
			t.Fatalf("after %s: %d %q", tc.path, resp.StatusCode, body)
		}
	}
}

// TestFastPathBackendClosesKeepAlive: a backend that closes every
// connection after its answer, without Connection: close, costs the client
// nothing: a kept-alive connection found closed is tried again on a fresh
// one.
func TestFastPathBackendClosesKeepAlive(t *testing.T) {
	raw := newRawBackend(t, func(string) string { return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" }, true)
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "raw"}} })
	e.register("raw-1", "raw", raw.addr, 1)
	e.synced()
	c, br := dialProxy(t, e.addr)
	for i := range 5 {
		io.WriteString(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i+1, resp.StatusCode, body)
		}
		time.Sleep(20 * time.Millisecond) // the backend's close reaches the proxy, or not: both ways must work
	}
	noneInFlight(t, e)
}

// TestFastPathDeadBackend: a dead instance costs a retry on the live one;
// with none alive the answer is 502, and nothing stays in flight.
func TestFastPathDeadBackend(t *testing.T) {
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api"}, {Path: "/dead/", Service: "dead"}}
	})
	e.register("api-1", "api", b.addr, 1)
	e.register("api-2", "api", deadPort(t), 1)
	e.register("dead-1", "dead", deadPort(t), 1)
	e.synced()
	c, br := dialProxy(t, e.addr)
	for i := range 6 {
		io.WriteString(c, "GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 {
			t.Fatalf("request %d with one dead instance: %d %q", i+1, resp.StatusCode, body)
		}
	}
	io.WriteString(c, "GET /dead/x HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 502 || !strings.Contains(body, `"dead" is unavailable`) {
		t.Fatalf("with only a dead instance: %d %q", resp.StatusCode, body)
	}
	io.WriteString(c, "GET /api/y HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := readAnswer(t, br, "GET"); resp.StatusCode != 200 {
		t.Fatalf("after a 502: %d", resp.StatusCode)
	}
	noneInFlight(t, e)
}

// noneInFlight waits until no request is in flight on any instance (a
// request ends on its instance once its response is written, which may be
// just after the client has read it).
func noneInFlight(t *testing.T, e *env) {
	t.Helper()
	eventually.True(t, 10*time.Second, "no request in flight once all are answered", func() bool {
		for _, r := range e.p.Routes() {
			for _, in := range r.Instances {
				if in.InFlight != 0 {
					return false
				}
			}
		}
		return true
	})
}

// TestFastPathSlowClient: a client that does not read its response at
// once gets all of it when it does, and the connection goes on.
func TestFastPathSlowClient(t *testing.T) {
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)
	e.synced()
	ta, err := net.ResolveTCPAddr("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTCP("tcp", nil, ta)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadBuffer(16 << 10) // the proxy's write finds the socket full
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReaderSize(c, 1024)
	for _, size := range []int{60000, 300000} {
		fmt.Fprintf(c, "GET /f?size=%d HTTP/1.1\r\nHost: x\r\n\r\n", size)
		time.Sleep(100 * time.Millisecond)
		resp, body := readAnswer(t, br, "GET")
		if resp.StatusCode != 200 || len(body) != size {
			t.Fatalf("size %d: %d, %d bytes", size, resp.StatusCode, len(body))
		}
		io.WriteString(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, body := readAnswer(t, br, "GET"); resp.StatusCode != 200 || !bytes.Contains([]byte(body), []byte(`"/next"`)) {
			t.Fatalf("after size %d: %d %q", size, resp.StatusCode, body)
		}
	}
}

// TestFastPathConnectionClose: a client that asks to close after its
// request gets its answer with Connection: close, and then the close.
func TestFastPathConnectionClose(t *testing.T) {
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)
	e.synced()
	c, br := dialProxy(t, e.addr)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, body := readAnswer(t, br, "GET")
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("answer: %d, close %v, %q", resp.StatusCode, resp.Close, body)
	}
	if got := decode(t, body); got.Header.Get("Connection") != "" {
		t.Errorf("the instance got Connection: %q", got.Header.Get("Connection"))
	}
	if n, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after the answer: %v, %v; want the close", n, err)
	}
}
