package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// recorder is a backend on loopback that keeps every byte the proxy sent
// it and parses them itself, strictly, so a test can tell "no request",
// "one well-framed request" and anything else apart.
type recorder struct {
	addr string
	ln   net.Listener

	mu   sync.Mutex
	raw  bytes.Buffer // everything received, on all connections
	reqs []recorded   // requests whose headers parsed, recorded once their body is read or fails
	bad  []error      // what did not parse as a request
}

type recorded struct {
	Method, URI string
	Header      http.Header
	Body        string
	Complete    bool // the body was read to its end as framed
}

func newRecorder(t *testing.T) *recorder {
	t.Helper()
	ln := listen(t)
	r := &recorder{addr: ln.Addr().String(), ln: ln}
	serveEach(t, ln, r.serve)
	return r
}

func (r *recorder) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(io.TeeReader(c, &lockedWriter{mu: &r.mu, w: &r.raw}))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.mu.Lock()
				r.bad = append(r.bad, err)
				r.mu.Unlock()
			}
			return
		}
		body, err := io.ReadAll(req.Body)
		r.mu.Lock()
		r.reqs = append(r.reqs, recorded{Method: req.Method, URI: req.RequestURI, Header: req.Header, Body: string(body), Complete: err == nil})
		r.mu.Unlock()
		if err != nil {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

func (r *recorder) snapshot() ([]recorded, []error, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs...), append([]error(nil), r.bad...), r.raw.String()
}

// requests returns the requests recorded for the given URIs.
func (r *recorder) requests(uris ...string) []recorded {
	reqs, _, _ := r.snapshot()
	var out []recorded
	for _, q := range reqs {
		for _, u := range uris {
			if q.URI == u {
				out = append(out, q)
			}
		}
	}
	return out
}

// settle gives a request for uri whose body the proxy cut off a moment to
// be recorded: the proxy answers its client as soon as it has closed the
// backend connection, before the backend has read to the end.
func (r *recorder) settle(uri string) {
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if len(r.requests(uri)) > 0 {
			return
		}
	}
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.raw.Reset()
	r.reqs, r.bad = nil, nil
}

// exchange writes raw to a new connection to addr, then reads responses
// until the proxy closes the connection (or 10s pass), and returns their
// status codes.
func exchange(t *testing.T, addr, raw string) []int {
	t.Helper()
	return exchangeHalf(t, addr, raw, true)
}

// exchangeHalf is exchange that, unless closeWrite, leaves the connection
// open for writing: the proxy must answer without seeing its end.
func exchangeHalf(t *testing.T, addr, raw string, closeWrite bool) []int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	// No more requests: a proxy waiting for a body it was promised sees
	// the end of the stream instead of waiting for its timeout.
	if closeWrite {
		c.(*net.TCPConn).CloseWrite()
	}
	var codes []int
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return codes
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
}

// smuggle is what a request smuggler sends after its first request: if a
// proxy and its backend disagree about where the first one ends, the
// backend takes this for a request of its own.
const smuggle = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

// How a malformed request may end, besides a 400 with nothing forwarded.
const (
	refused = iota
	// streamed: the body is streamed, so its framing breaks only after the
	// headers went to the backend; the proxy then cuts the backend's
	// connection, and the backend sees at most one request it cannot
	// finish reading, never a complete one.
	streamed
	// normalized: fasthttp accepts a bare LF ending the request line, and
	// the proxy writes the request line anew with CRLF, so the backend sees
	// exactly one well-framed request.
	normalized
)

// TestSmugglingRefused sends requests whose framing is ambiguous or
// malformed (RFC 9112 sections 2.2, 5, 6 and 7.1) and checks that each is
// answered 400 (or the connection closed), and that the backend saw no
// request at all: nothing is forwarded for the backend to read differently.
// The smuggled request that follows many of them must never arrive.
func TestSmugglingRefused(t *testing.T) {
	rec := newRecorder(t)
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "app"}}
		c.IdleTimeout = 2 * time.Second
	})
	e.register("app-1", "app", rec.addr, 1)
	e.synced()

	for _, tc := range []struct {
		name, raw string
		allow     int
	}{
		{"CL then TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"TE then CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"CL and TE identity", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello" + smuggle, refused},
		{"two different CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" + smuggle, refused},
		{"two equal CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + smuggle, refused},
		{"CL list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!" + smuggle, refused},
		{"CL signed", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello" + smuggle, refused},
		{"CL negative", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n" + smuggle, refused},
		{"CL hex", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello" + smuggle, refused},
		{"CL overflow", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551621\r\n\r\nhello" + smuggle, refused},
		{"TE chunked, identity", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"TE xchunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"TE chunked not last", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"TE identity", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n" + smuggle, refused},
		{"TE twice", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"TE with tab", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\t\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"TE vertical tab", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \vchunked\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", refused},
		{"obs-fold tab", "GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n", refused},
		{"obs-fold TE", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"obs-fold CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n 5\r\n\r\nhello" + smuggle, refused},
		{"space before first header", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", refused},
		{"bare LF everywhere", "GET / HTTP/1.1\nHost: x\n\n", refused},
		{"bare LF in headers", "GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", refused},
		{"bare LF ends headers", "GET / HTTP/1.1\r\nHost: x\r\n\n", refused},
		{"bare LF after request line", "GET / HTTP/1.1\nHost: x\r\n\r\n", normalized},
		{"bare CR in header", "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\rContent-Length: 5\r\n\r\nhello", refused},
		{"invalid chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + smuggle, streamed},
		{"chunk size overflow", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n" + smuggle, streamed},
		{"chunk size bare LF", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + smuggle, streamed},
		{"chunk data too long", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n" + smuggle, streamed},
		{"space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", refused},
		{"space before colon CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello" + smuggle, refused},
		{"space before colon TE", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggle, refused},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\x00c\r\n\r\n", refused},
		{"NUL in name", "GET / HTTP/1.1\r\nHost: x\r\nX-\x00A: b\r\n\r\n", refused},
		{"no colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A b\r\n\r\n", refused},
		{"two hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", refused},
		{"no host", "GET / HTTP/1.1\r\n\r\n", refused},
		{"bad version", "GET / HTTP/1.2.3\r\nHost: x\r\n\r\n", refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each case asks for a path of its own, so that what the
			// backend records is told apart from a late arrival of the
			// case before.
			path := "/case-" + strings.ReplaceAll(tc.name, " ", "-")
			rec.reset()
			codes := exchange(t, e.addr, strings.Replace(tc.raw, " / HTTP/", " "+path+" HTTP/", 1))
			if tc.allow == streamed {
				rec.settle(path)
			}
			reqs := rec.requests(path, "/smuggled")
			_, bad, raw := rec.snapshot()
			if tc.allow == normalized && len(codes) == 1 && codes[0] == 200 {
				if len(reqs) != 1 || len(bad) != 0 || !reqs[0].Complete {
					t.Errorf("answered 200 but the backend saw %+v (errors %v): %q", reqs, bad, raw)
				}
				return
			}
			if len(codes) > 0 && codes[0] != 400 {
				t.Errorf("answered %v, want 400", codes)
			}
			if len(codes) > 1 {
				t.Errorf("answered %d responses %v on one connection, want at most one", len(codes), codes)
			}
			if tc.allow == streamed && len(reqs) <= 1 && len(bad) == 0 {
				for _, r := range reqs {
					if r.Complete || r.URI != path {
						t.Errorf("the backend read a complete request %+v: %q", r, raw)
					}
				}
				return
			}
			if len(reqs) != 0 || len(bad) != 0 {
				t.Errorf("the backend saw %d requests %+v (errors %v): %q", len(reqs), reqs, bad, raw)
			}
		})
	}
}

// TestWellFramedForwarded sends well-framed requests with bodies and checks
// that each arrives at the backend as exactly one request, framed so that
// no byte of it could be read as a request of its own.
func TestWellFramedForwarded(t *testing.T) {
	rec := newRecorder(t)
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "app"}} })
	e.register("app-1", "app", rec.addr, 1)
	e.synced()

	for _, tc := range []struct{ name, raw, body string }{
		{"content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "hello"},
		{"chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world"},
		{"chunked uppercase with extension", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n", "hello"},
		{"chunked with trailer", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n", "hello"},
		{"no body", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec.reset()
			codes := exchange(t, e.addr, tc.raw)
			if len(codes) != 1 || codes[0] != 200 {
				t.Fatalf("answered %v, want [200]", codes)
			}
			reqs, bad, raw := rec.snapshot()
			if len(reqs) != 1 || len(bad) != 0 || !reqs[0].Complete || reqs[0].Body != tc.body {
				t.Fatalf("the backend saw %+v (errors %v), want one request with body %q: %q", reqs, bad, tc.body, raw)
			}
			h := reqs[0].Header
			if _, ok := h["Content-Length"]; ok && len(h["Transfer-Encoding"]) > 0 {
				t.Errorf("forwarded with both Content-Length and Transfer-Encoding: %q", raw)
			}
		})
	}

	// Pipelined requests on one connection arrive one by one, each with
	// its own body and nothing of the next.
	rec.reset()
	codes := exchange(t, e.addr, "POST /p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"+
		"POST /p2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ndef\r\n0\r\n\r\n"+
		"GET /p3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	var got []string
	for _, r := range rec.requests("/p1", "/p2", "/p3") {
		got = append(got, r.Method+" "+r.URI+" "+r.Body)
	}
	if len(codes) != 3 || strings.Join(got, ",") != "POST /p1 abc,POST /p2 def,GET /p3 " {
		t.Errorf("pipelined: answered %v, the backend saw %q", codes, got)
	}
}

// TestSizeLimits checks the header and body limits on raw connections: a
// header block past MaxHeaderSize gets 431, a body whose Content-Length is
// past MaxBodySize gets 413, and neither reaches the backend; a chunked
// body that grows past the limit gets 413 and the backend never reads it
// to its end.
func TestSizeLimits(t *testing.T) {
	rec := newRecorder(t)
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "app"}}
		c.MaxHeaderSize = 4096
		c.MaxBodySize = 1000
	})
	e.register("app-1", "app", rec.addr, 1)
	e.synced()

	big := strings.Repeat("a", 5000)
	many := strings.Repeat("X-Many: 0123456789012345678901234567890123456789\r\n", 100)
	for _, tc := range []struct {
		name, raw string
		want      int
		streamed  bool
	}{
		{"one long header", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + big + "\r\n\r\n", 431, false},
		{"many headers", "GET / HTTP/1.1\r\nHost: x\r\n" + many + "\r\n", 431, false},
		{"long URI", "GET /" + big + " HTTP/1.1\r\nHost: x\r\n\r\n", 431, false},
		{"content-length over", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n" + strings.Repeat("b", 1001), 413, false},
		{"content-length huge", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nb", 413, false}, // answered before the body
		{"chunked over", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + strings.Repeat("c", 2000) + "\r\n0\r\n\r\n", 413, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec.reset()
			codes := exchangeHalf(t, e.addr, tc.raw, tc.want != 413)
			if len(codes) != 1 || codes[0] != tc.want {
				t.Errorf("answered %v, want [%d]", codes, tc.want)
			}
			if tc.streamed {
				rec.settle("/")
			}
			reqs, bad, raw := rec.snapshot()
			if len(bad) > 0 {
				t.Errorf("the backend could not parse what it got (%v): %q", bad, raw)
			}
			for _, r := range reqs {
				if !tc.streamed || r.Complete {
					t.Errorf("the backend saw %+v (errors %v): %q", r, bad, raw)
				}
			}
		})
	}
	// At the limits, requests go through.
	codes := exchange(t, e.addr, "POST /at-limit HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"+strings.Repeat("b", 1000))
	n := 0
	for _, r := range rec.requests("/at-limit") {
		if r.Complete && len(r.Body) == 1000 {
			n++
		}
	}
	if len(codes) != 1 || codes[0] != 200 || n != 1 {
		t.Errorf("a body at the limit: answered %v, the backend saw it %d times", codes, n)
	}
}

// TestSlowloris opens connections that send their headers one byte a
// second. Each is cut off once the header timeout runs out, although it
// never stops sending, and while they are open another client's requests
// are answered at once.
func TestSlowloris(t *testing.T) {
	const slow = 8
	b := newBackend(t, "app")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "app"}}
		c.HeaderTimeout = 5 * time.Second
	})
	e.register("app-1", "app", b.addr, 1)
	e.synced()

	type result struct {
		open time.Duration // until the proxy closed the connection
		sent int           // bytes written by then
	}
	results := make(chan result, slow)
	stop := make(chan struct{})
	defer close(stop)
	for range slow {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			start := time.Now()
			closed := make(chan struct{})
			go func() {
				// The proxy may answer 408 before it closes; read to the end.
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				io.Copy(io.Discard, c)
				close(closed)
			}()
			msg := "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("s", 100)
			sent := 0
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for sent < len(msg) {
				if _, err := c.Write([]byte{msg[sent]}); err != nil {
					break
				}
				sent++
				select {
				case <-tick.C:
				case <-closed:
					results <- result{time.Since(start), sent}
					return
				case <-stop:
					return
				}
			}
			<-closed
			results <- result{time.Since(start), sent}
		}()
	}

	// Meanwhile, another client is served: all its requests are answered
	// while every slow client is still open (none has reached the header
	// timeout yet), so they were not held up behind the slow ones.
	for range 10 {
		if code, _ := e.get("", "/"); code != 200 {
			t.Fatalf("a request during the slow clients: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(results); n > 0 {
		t.Errorf("%d slow clients were cut off before 10 other requests were answered: those waited", n)
	}

	for range slow {
		select {
		case r := <-results:
			// Cut off after the 5s header timeout, well before the 100-odd
			// seconds the whole header would take.
			if r.open > 15*time.Second || r.sent > 15 {
				t.Errorf("a slow client stayed open %v and sent %d bytes", r.open, r.sent)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a slow client was never cut off")
		}
	}
}

func TestBadFraming(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want bool
	}{
		{"", false},
		{"Host: x\r\n\r\n", false},
		{"Host: x\r\nContent-Length: 5\r\n\r\n", false},
		{"Host: x\r\ntransfer-encoding:  CHUNKED \r\n\r\n", false},
		{"Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"Transfer-Encoding: chunked\r\ncontent-length: 5\r\n\r\n", true},
		{"Transfer-Encoding: identity\r\n\r\n", true},
		{"Transfer-Encoding: chunked, chunked\r\n\r\n", true},
		{"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"X-A: b\r\n c\r\n\r\n", true},
		{"X-A: b\r\n\tc\r\n\r\n", true},
		{" Host: x\r\n\r\n", true},
		{"Host: x\nX-A: b\r\n\r\n", true},
		{"Host: x\r\n\n", true},
		{"Transfer-Encodings: x\r\nContent-Lengths: 1\r\n\r\n", false},
	} {
		if got := badFraming([]byte(tc.raw)); got != tc.want {
			t.Errorf("badFraming(%q) = %v, want %v", tc.raw, got, tc.want)
		}
	}
	raw := []byte("Host: example.com\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\nContent-Length: 5\r\n\r\n")
	if n := testing.AllocsPerRun(1000, func() { badFraming(raw) }); n != 0 {
		t.Errorf("badFraming allocates %v times", n)
	}
}

func BenchmarkBadFraming(b *testing.B) {
	raw := []byte("Host: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: text/html,application/xhtml+xml\r\n" +
		"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nCookie: session=0123456789abcdef\r\n\r\n")
	b.ReportAllocs()
	for b.Loop() {
		if badFraming(raw) {
			b.Fatal("bad")
		}
	}
}

func FuzzBadFraming(f *testing.F) {
	f.Add([]byte("Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"))
	f.Add([]byte("X-A: b\r\n c\n\n"))
	f.Fuzz(func(t *testing.T, raw []byte) { badFraming(raw) })
}

// TestBrokenBodyKeepsBackend sends bodies that break off (a malformed
// chunk, a client that closes before its Content-Length is reached) and
// checks that they are answered as the client's fault and do not count
// against the backend: otherwise any client could take every instance out
// of rotation (max_fails is 1 by default) with a handful of bad uploads.
func TestBrokenBodyKeepsBackend(t *testing.T) {
	b := newBackend(t, "app")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "app"}} })
	e.register("app-1", "app", b.addr, 1)
	e.synced()

	big := strings.Repeat("x", 64<<10) // more than fasthttp reads ahead before calling the proxy
	for _, tc := range []struct{ name, raw string }{
		{"bad chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n" + big + "\r\nzz\r\n"},
		{"short content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + big},
	} {
		for i := range 3 {
			codes := exchange(t, e.addr, tc.raw)
			if len(codes) > 0 && codes[0] != 400 && codes[0] != 408 {
				t.Errorf("%s (%d): answered %v, want 400", tc.name, i, codes)
			}
			for _, m := range e.bal.Pool("app").Members() {
				if !m.Backend.DownUntil().IsZero() {
					t.Fatalf("%s (%d): the backend was taken out of rotation", tc.name, i)
				}
			}
			if code, body := e.get("", "/after"); code != 200 {
				t.Fatalf("%s (%d): the next request got %d %q", tc.name, i, code, body)
			}
		}
	}
}

// BenchmarkProxyPost is BenchmarkProxy with a 1 KiB request body, which
// goes through the proxy's clientBody wrapper.
func BenchmarkProxyPost(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.WriteString("hello") }}
	go srv.Serve(ln)
	defer srv.Shutdown()
	t := &testing.T{}
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}} })
	defer e.close()
	e.register("api-1", "api", ln.Addr().String(), 1)
	c := &fasthttp.HostClient{Addr: e.addr, MaxConns: 64}
	body := bytes.Repeat([]byte("x"), 1024)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://x/api/hello")
		req.Header.SetMethod("POST")
		for pb.Next() {
			req.SetBody(body)
			if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				b.Errorf("%v %d", err, resp.StatusCode())
				return
			}
		}
	})
}
