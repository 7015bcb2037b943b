package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The lean server's own tests, with real sockets and raw frames; the
// package's HTTP/2 tests (h2_test.go, grpc_test.go, h2ws_test.go, ...) run
// against both servers (leak_test.go).

const (
	framePing         = 6
	frameWindowUpdate = 8
	flagAck           = 1
)

func newLeanEnv(t *testing.T, tweak func(*Config)) *env {
	t.Helper()
	if testH2Server != H2ServerLean {
		t.Skip("the lean server's own test: it runs in the lean server's pass")
	}
	return newH2CEnv(t, tweak)
}

type rawFrame struct {
	typ, flags byte
	stream     uint32
	payload    []byte
}

func readFrame(t *testing.T, c net.Conn) rawFrame {
	t.Helper()
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	f := rawFrame{typ: hdr[3], flags: hdr[4], stream: binary.BigEndian.Uint32(hdr[5:]) & 0x7fffffff, payload: make([]byte, n)}
	if _, err := io.ReadFull(c, f.payload); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// readStream reads frames until one of stream id that satisfies done.
func readStream(t *testing.T, c net.Conn, id uint32, done func(rawFrame) bool) rawFrame {
	t.Helper()
	for {
		f := readFrame(t, c)
		if f.stream == id && done(f) {
			return f
		}
		if f.typ == frameGoAway {
			t.Fatalf("GOAWAY while waiting on stream %d: code %d", id, binary.BigEndian.Uint32(f.payload[4:8]))
		}
	}
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func setting(id uint16, v uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(nil, id), v)
}

// TestH2LeanFlowControl: a response never sends more DATA than the
// client's windows allow, and all of it arrives as they open.
func TestH2LeanFlowControl(t *testing.T) {
	e := newLeanEnv(t, nil)
	c := rawH2(t, e.addr)
	// Stream windows of 0: nothing may be sent until a WINDOW_UPDATE.
	c.Write(frame(nil, frameSettings, 0, 0, setting(4, 0)))
	c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, 1, getHeaders("/api/dl?size=100000")))
	readStream(t, c, 1, func(f rawFrame) bool { return f.typ == frameHeaders })
	got, granted := 0, 0
	for got < 100000 {
		granted += 7000
		c.Write(frame(frame(nil, frameWindowUpdate, 0, 1, u32(7000)), frameWindowUpdate, 0, 0, u32(7000)))
		for got < min(granted, 100000) {
			f := readStream(t, c, 1, func(f rawFrame) bool { return f.typ == frameData })
			got += len(f.payload)
			if got > granted {
				t.Fatalf("%d bytes of DATA with windows of %d", got, granted)
			}
			if f.flags&flagEndStream != 0 && got != 100000 {
				t.Fatalf("the stream ended after %d bytes", got)
			}
		}
	}
}

// TestH2LeanUpload: a request body far larger than the windows goes to the
// instance whole, with and without a Content-Length.
func TestH2LeanUpload(t *testing.T) {
	e := newLeanEnv(t, func(c *Config) { c.HTTP2.StreamWindow, c.HTTP2.ConnWindow = 64<<10, 128<<10 })
	cl := h2cClient(t, e.addr)
	body := strings.Repeat("x", 3<<20)
	for _, known := range []bool{true, false} {
		var r io.Reader = strings.NewReader(body)
		if !known {
			r = io.MultiReader(r) // no length known: none sent
		}
		resp, err := cl.Post("http://x/api/up", "text/plain", r)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ec := decode(t, string(out)); resp.StatusCode != 200 || ec.Body != int64(len(body)) {
			t.Fatalf("length known %v: %d, the instance got %d bytes", known, resp.StatusCode, ec.Body)
		}
	}
}

// TestH2LeanStreamErrors: malformed requests get RST_STREAM
// PROTOCOL_ERROR, a header block past max_header_list_size a 431, and the
// connection serves on.
func TestH2LeanStreamErrors(t *testing.T) {
	e := newLeanEnv(t, func(c *Config) { c.HTTP2.MaxHeaderListSize = 1024 })
	c := rawH2(t, e.addr)
	lit := func(b []byte, k, v string) []byte {
		var enc bytes.Buffer
		hpack.NewEncoder(&enc).WriteField(hpack.HeaderField{Name: k, Value: v, Sensitive: true})
		return append(b, enc.Bytes()...)
	}
	cases := []struct {
		name  string
		block []byte
		data  []byte // sent with END_STREAM after the headers, if any
	}{
		{"upper-case name", lit(getHeaders("/api/x"), "X-Up", "1"), nil},
		{"connection field", lit(getHeaders("/api/x"), "connection", "close"), nil},
		{"te: gzip", lit(getHeaders("/api/x"), "te", "gzip"), nil},
		{"CR LF in a value", lit(getHeaders("/api/x"), "x-a", "1\r\nx-b: 2"), nil},
		{"pseudo after regular", lit(lit(nil, "x-a", "1"), ":method", "GET"), nil},
		{"no :path", lit(lit(lit(nil, ":method", "GET"), ":scheme", "http"), ":authority", "x"), nil},
		{"body longer than its content-length", lit(getHeaders("/api/x"), "content-length", "2"), []byte("abc")},
	}
	id := uint32(1)
	for _, tc := range cases {
		flags := byte(flagEndHeaders)
		if tc.data == nil {
			flags |= flagEndStream
		}
		b := frame(nil, frameHeaders, flags, id, tc.block)
		if tc.data != nil {
			b = frame(b, frameData, flagEndStream, id, tc.data)
		}
		c.Write(b)
		f := readStream(t, c, id, func(f rawFrame) bool { return f.typ == frameRSTStream || f.typ == frameHeaders })
		if f.typ != frameRSTStream || binary.BigEndian.Uint32(f.payload) != 1 {
			t.Errorf("%s: frame type %d %x, want RST_STREAM PROTOCOL_ERROR", tc.name, f.typ, f.payload)
		}
		id += 2
	}
	c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, id, lit(lit(getHeaders("/api/x"), "x-big", strings.Repeat("a", 600)), "x-big2", strings.Repeat("a", 600))))
	f := readStream(t, c, id, func(f rawFrame) bool { return f.typ == frameHeaders })
	var status string
	hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		if hf.Name == ":status" {
			status = hf.Value
		}
	}).Write(f.payload)
	if status != "431" {
		t.Errorf("header block over max_header_list_size: status %q", status)
	}
	// PING is answered, and a request still is.
	c.Write(frame(nil, framePing, 0, 0, []byte("12345678")))
	if f := readStream(t, c, 0, func(f rawFrame) bool { return f.typ == framePing }); f.flags&flagAck == 0 || string(f.payload) != "12345678" {
		t.Errorf("PING answered with %+v", f)
	}
	id += 2
	c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, id, getHeaders("/api/x")))
	f = readStream(t, c, id, func(f rawFrame) bool { return f.typ == frameHeaders })
	if !bytes.HasPrefix(f.payload, []byte{0x20, 0x88}) && !bytes.HasPrefix(f.payload, []byte{0x88}) {
		t.Errorf("a request after the stream errors: header block %x, want :status 200", f.payload)
	}
}

// TestH2LeanFlowErrors: DATA past a stream's window resets the stream
// with FLOW_CONTROL_ERROR (3); a window pushed over 2^31-1 ends the
// connection with it. One DATA frame larger than the whole window: data
// past it over several frames may meet a window the handler already gave
// back, which is no error (a run failed so).
func TestH2LeanFlowErrors(t *testing.T) {
	e := newLeanEnv(t, func(c *Config) { c.HTTP2.StreamWindow, c.HTTP2.ConnWindow = 1<<10, 16<<10 })
	c := rawH2(t, e.addr)
	c.Write(frame(frame(nil, frameHeaders, flagEndHeaders, 1, getHeaders("/api/x")), frameData, 0, 1, make([]byte, 2<<10)))
	f := readStream(t, c, 1, func(f rawFrame) bool { return f.typ == frameRSTStream })
	if code := binary.BigEndian.Uint32(f.payload); code != 3 {
		t.Errorf("DATA past the stream window: RST_STREAM %d, want FLOW_CONTROL_ERROR (3)", code)
	}
	// Past the connection's window: not shown end to end, as the window
	// is given back while handlers read their bodies (five streams of
	// 16 KiB passed in CI when the handlers kept up); see
	// TestH2LeanConnWindow.
	c = rawH2(t, e.addr)
	c.Write(frame(frame(nil, frameWindowUpdate, 0, 0, u32(1<<31-1)), frameWindowUpdate, 0, 0, u32(1<<31-1)))
	if code := readUntilGoAway(c); code != 3 {
		t.Errorf("connection window overflow: GOAWAY %d, want FLOW_CONTROL_ERROR (3)", code)
	}
}

// TestH2LeanConnWindow: a DATA frame larger than what is left of the
// connection's receive window is a connection error FLOW_CONTROL_ERROR,
// whatever stream it is on, and takes nothing from the window.
func TestH2LeanConnWindow(t *testing.T) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, &buf)
	fr.WriteData(1, false, make([]byte, 200))
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	c := &leanConn{cfg: &HTTP2Config{ConnWindow: 1 << 16, StreamWindow: 1 << 16}, streams: map[uint32]*leanStream{}, recvWin: 100}
	err = c.onData(f.(*http2.DataFrame))
	if ce, ok := err.(http2.ConnectionError); !ok || http2.ErrCode(ce) != http2.ErrCodeFlowControl {
		t.Errorf("200 bytes against a window of 100: %v, want a connection FLOW_CONTROL_ERROR", err)
	}
	if c.recvWin != 100 {
		t.Errorf("window %d after the refused frame, want 100", c.recvWin)
	}
}

// FuzzH2Frames: whatever frames follow a client's preface, the lean
// server neither panics nor hangs: the connection ends once the client
// stops sending.
func FuzzH2Frames(f *testing.F) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.WriteString("hello") }}
	go srv.Serve(ln)
	f.Cleanup(func() { srv.Shutdown() })
	t := &testing.T{} // as benchEnv: the environment outlives each input
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.HTTP2.Server = H2ServerLean
		c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
	})
	f.Cleanup(e.close)
	e.register("api-1", "api", ln.Addr().String(), 1)
	get := frame(nil, frameHeaders, flagEndHeaders|flagEndStream, 1, getHeaders("/api/x"))
	f.Add(get)
	f.Add(frame(frame(nil, frameHeaders, flagEndHeaders, 1, getHeaders("/api/x")), frameData, flagEndStream, 1, []byte("body")))
	f.Add(frame(frame(nil, frameHeaders, 0, 3, getHeaders("/api/x")[:10]), frameContinuation, flagEndHeaders|flagEndStream, 3, getHeaders("/api/x")[10:]))
	f.Add(frame(frame(get, frameRSTStream, 0, 1, u32(8)), framePing, 0, 0, []byte("abcdefgh")))
	f.Add(frame(frame(nil, frameSettings, 0, 0, setting(4, 1)), frameWindowUpdate, 0, 0, u32(100)))
	f.Add(frame(get, frameGoAway, 0, 0, append(u32(1), u32(0)...)))
	f.Add(frame(nil, frameHeaders, flagEndHeaders|flagEndStream|0x08, 5, append([]byte{2}, append(getHeaders("/api/x"), 0, 0)...))) // padded
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write(append(append([]byte(h2Preface), frame(nil, frameSettings, 0, 0, nil)...), b...))
		c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("the connection did not end: %v", err)
		}
	})
}

// TestH2LeanSlowStreamHoldsNothing: a request alone on its connection is
// served on the connection's reader; while its instance takes its time,
// the connection still answers PING, serves other streams, and takes
// the slow stream's reset, and it serves requests after it.
func TestH2LeanSlowStreamHoldsNothing(t *testing.T) {
	if testH2Server != H2ServerLean {
		t.Skip("the lean server's own test: it runs in the lean server's pass")
	}
	e, held, release := newHoldEnv(t, nil)
	defer close(release)

	c := rawH2(t, e.addr)
	body := func(id uint32) string {
		t.Helper()
		var b []byte
		for {
			f := readStream(t, c, id, func(f rawFrame) bool { return f.typ == frameData || f.typ == frameRSTStream })
			if f.typ == frameRSTStream {
				t.Fatalf("stream %d reset: code %d", id, binary.BigEndian.Uint32(f.payload))
			}
			b = append(b, f.payload...)
			if f.flags&flagEndStream != 0 {
				return string(b)
			}
		}
	}
	c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, 1, getHeaders("/api/hold")))
	<-held
	c.Write(frame(nil, framePing, 0, 0, []byte("87654321")))
	if f := readStream(t, c, 0, func(f rawFrame) bool { return f.typ == framePing }); f.flags&flagAck == 0 || string(f.payload) != "87654321" {
		t.Fatalf("PING answered with %+v", f)
	}
	c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, 3, getHeaders("/api/fast")))
	if got := body(3); got != "/fast" {
		t.Fatalf("stream 3 beside the held one: %q", got)
	}
	// The held stream's reset reaches it: nothing more comes on it, and
	// the connection goes on.
	c.Write(frame(nil, frameRSTStream, 0, 1, u32(8)))
	c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, 5, getHeaders("/api/after")))
	for {
		f := readFrame(t, c)
		if f.stream == 1 && f.typ == frameData && len(f.payload) > 0 {
			t.Fatalf("DATA on the reset stream: %q", f.payload)
		}
		if f.stream == 5 && f.typ == frameData {
			if string(f.payload) != "/after" {
				t.Fatalf("stream 5: %q", f.payload)
			}
			break
		}
	}
	// Alone again: served on the reader again, one after another.
	for id := uint32(7); id < 27; id += 2 {
		c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, id, getHeaders("/api/n")))
		if got := body(id); got != "/n" {
			t.Fatalf("stream %d: %q", id, got)
		}
	}
}

// newHoldEnv is an h2c front door whose /api/ goes to an instance that
// answers with the request's path, except /hold: that request is sent
// on held, and answered once release is closed.
func newHoldEnv(t *testing.T, tweak func(*Config)) (*env, chan struct{}, chan struct{}) {
	t.Helper()
	if testH2Server != H2ServerLean {
		t.Skip("the lean server's own test: it runs in the lean server's pass")
	}
	held := make(chan struct{}, 4)
	release := make(chan struct{})
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			held <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.Routes = []Route{{Path: "/api/", Service: "slow", Strip: "/api"}}
		if tweak != nil {
			tweak(c)
		}
	})
	e.register("slow1", "slow", ln.Addr().String(), 1)
	e.synced()
	return e, held, release
}

// TestH2LeanIdleTimeout: idle_timeout ends a connection with no stream
// open, counted from its last stream's end; a stream open longer than it,
// and requests that keep coming past it, do not.
func TestH2LeanIdleTimeout(t *testing.T) {
	const idle = 600 * time.Millisecond
	e, held, release := newHoldEnv(t, func(c *Config) { c.IdleTimeout = idle })
	c := rawH2(t, e.addr)
	id := uint32(1)
	get := func(path string) {
		t.Helper()
		c.Write(frame(nil, frameHeaders, flagEndHeaders|flagEndStream, id, getHeaders(path)))
		f := readStream(t, c, id, func(f rawFrame) bool { return f.typ == frameData && f.flags&flagEndStream != 0 })
		if !strings.HasSuffix(path, string(f.payload)) {
			t.Fatalf("%s: %q", path, f.payload)
		}
		id += 2
	}
	// Requests every idle/3, for three idle timeouts.
	for range 9 {
		get("/api/tick")
		time.Sleep(idle / 3)
	}
	// One stream open for longer than the idle timeout.
	go func() {
		<-held
		time.Sleep(2 * idle)
		close(release)
	}()
	get("/api/hold")
	ended := time.Now()
	if code := readUntilGoAway(c); code != 0 {
		t.Fatalf("idle connection: GOAWAY code %d, want NO_ERROR (0)", code)
	}
	if d := time.Since(ended); d < idle*9/10 {
		t.Fatalf("GOAWAY %v after the last stream ended, before idle_timeout (%v)", d, idle)
	}
}
