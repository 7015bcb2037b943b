package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/pier-dev/pier/registry/raft"
)

// Forwarded writes in frames. A forwarded write over HTTP/1 costs the
// forwarding agent a request written and an answer read, and the server a
// request read and an answer written, each its own system calls on a
// connection that carries one request at a time: under 64 concurrent
// writers that was most of a follower's CPU (deploy/bench/README.md). A
// write (not a GET or HEAD, not a snapshot, a body of known length up to
// MaxBodySize) therefore goes as one frame on one connection per server,
// which carries every such request at once: the requests queued while the
// previous batch was written leave in one write, and the server's answers
// come back the same way. The frame holds the request as the forwarding
// proxy made it (method, URI, headers, body) and the server serves it with
// the same handler as its internal HTTP, so the token, the ACLs and every
// answer are what they were; only the bytes on the wire change.
//
// The connection opens with raft.ForwardByte, a version and CRLF, and the
// server answers forwardAck. A server that does not know frames reads the
// preamble as a malformed HTTP request line and answers 400 at once; the
// agent then forwards to it over HTTP for a minute before asking again.
//
// A frame is a 4-byte big-endian length and a payload: a request is id,
// method, URI, headers and body; an answer id, status, headers and body
// (ids and counts uvarints, strings a uvarint length and the bytes, the
// body the rest).

const (
	forwardVersion = 1
	forwardAck     = 0xa1
	// forwardMaxAnswer bounds an answer frame the agent accepts.
	forwardMaxAnswer = 64 << 20
	// forwardHeaderRoom is what a request frame may hold beyond its body.
	forwardHeaderRoom = 64 << 10
	// forwardWriteWithin bounds one write of a batch: a server that takes
	// nothing for that long is treated as gone.
	forwardWriteWithin = 10 * time.Second
	// forwardRetryHTTP is how long a server that refused frames is sent
	// HTTP before it is asked again.
	forwardRetryHTTP = time.Minute
)

var forwardPreamble = []byte{raft.ForwardByte, forwardVersion, '\r', '\n'}

// errNoFrames: the server does not speak frames.
var errNoFrames = errors.New("api: the server does not take forwarded frames")

// frameable reports whether r goes in a frame.
func frameable(r *http.Request, maxBody int64) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodConnect, http.MethodOptions:
		return false
	}
	return r.URL.Path != "/v1/snapshot" && r.ContentLength >= 0 && r.ContentLength <= maxBody
}

// frames is the http.RoundTripper of forwarded requests: frameable ones
// in frames, the others (and every request to a server that does not
// take frames) through http.
type frames struct {
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	dialWithin time.Duration
	maxBody    int64
	http       *http.Transport

	mu      sync.Mutex
	conns   map[string]*frameConn
	noFr    map[string]time.Time     // refused frames, until
	dialing map[string]chan struct{} // closed when the dial ends
	closed  bool
}

func newFrames(dial func(ctx context.Context, network, addr string) (net.Conn, error), dialWithin time.Duration, maxBody int64) *frames {
	if dial == nil {
		dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	return &frames{dial: dial, dialWithin: dialWithin, maxBody: maxBody, http: newForwarder(dial, dialWithin),
		conns: map[string]*frameConn{}, noFr: map[string]time.Time{}, dialing: map[string]chan struct{}{}}
}

// RoundTrip sends r in a frame when it can. Its errors are those unsent
// reads (consensus.go): a *net.OpError "dial" or "write" when r did not
// reach the server whole, "read" when it did and its answer was lost.
func (f *frames) RoundTrip(r *http.Request) (*http.Response, error) {
	if !frameable(r, f.maxBody) {
		return f.http.RoundTrip(r)
	}
	c, err := f.conn(r.Context(), r.URL.Host)
	if errors.Is(err, errNoFrames) {
		return f.http.RoundTrip(r)
	}
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	return c.roundTrip(r)
}

// CloseIdleConnections closes the HTTP transport's idle connections and
// every frame connection (the agent is stopping).
func (f *frames) CloseIdleConnections() {
	f.http.CloseIdleConnections()
	f.mu.Lock()
	f.closed = true
	conns := f.conns
	f.conns = map[string]*frameConn{}
	f.mu.Unlock()
	for _, c := range conns {
		c.fail(net.ErrClosed)
	}
}

// conn answers the frame connection to addr, dialling it when there is
// none or the last one broke; the requests that find a dial under way
// wait for it rather than dial their own.
func (f *frames) conn(ctx context.Context, addr string) (*frameConn, error) {
	for {
		f.mu.Lock()
		if c := f.conns[addr]; c != nil && !c.broken() {
			f.mu.Unlock()
			return c, nil
		}
		if until, ok := f.noFr[addr]; ok && time.Now().Before(until) {
			f.mu.Unlock()
			return nil, errNoFrames
		}
		wait, busy := f.dialing[addr]
		if !busy {
			break // f.mu held
		}
		f.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	done := make(chan struct{})
	f.dialing[addr] = done
	f.mu.Unlock()
	c, err := f.open(ctx, addr)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.dialing, addr)
	close(done)
	if errors.Is(err, errNoFrames) {
		f.noFr[addr] = time.Now().Add(forwardRetryHTTP)
	}
	if err != nil {
		return nil, err
	}
	if f.closed {
		c.fail(net.ErrClosed)
		return nil, net.ErrClosed
	}
	f.conns[addr] = c
	return c, nil
}

func (f *frames) open(ctx context.Context, addr string) (*frameConn, error) {
	ctx, cancel := context.WithTimeout(ctx, f.dialWithin)
	defer cancel()
	nc, err := f.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	var ack [1]byte
	if _, err = nc.Write(forwardPreamble); err == nil {
		_, err = io.ReadFull(nc, ack[:])
	}
	if err != nil || ack[0] != forwardAck || nc.SetDeadline(time.Time{}) != nil {
		// Connected, and no frames: an older server, or one going away;
		// HTTP finds out which.
		nc.Close()
		return nil, errNoFrames
	}
	c := newFrameConn(nc, forwardMaxAnswer)
	c.pending = map[uint64]chan frameAnswer{}
	go c.writeLoop()
	go c.readAnswers()
	return c, nil
}

// frameAnswer is what a request's caller gets back.
type frameAnswer struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// frameConn is one connection of frames, on either side: frames queued by
// any goroutine leave in batches from writeLoop.
type frameConn struct {
	c        net.Conn
	maxFrame int

	mu      sync.Mutex
	queue   []queued
	wake    chan struct{}
	err     error                       // set once broken
	next    uint64                      // the agent's: the last request id
	pending map[uint64]chan frameAnswer // the agent's: requests awaiting their answer
	done    chan struct{}               // closed once broken
	spare   []byte                      // writeLoop's buffer
}

type queued struct {
	frame []byte
	id    uint64 // the agent's request, 0 for the server's answers
}

func newFrameConn(c net.Conn, maxFrame int) *frameConn {
	return &frameConn{c: c, maxFrame: maxFrame, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (c *frameConn) broken() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

// fail breaks the connection: every request still waiting gets err, as a
// write error if it never left, a read error if it did.
func (c *frameConn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	unsent := map[uint64]bool{}
	for _, q := range c.queue {
		unsent[q.id] = true
	}
	c.queue = nil
	pending := c.pending
	c.pending = nil
	close(c.done)
	c.mu.Unlock()
	c.c.Close()
	for id, ch := range pending {
		op := "read"
		if unsent[id] {
			op = "write"
		}
		ch <- frameAnswer{err: &net.OpError{Op: op, Net: "tcp", Err: err}}
	}
}

// send queues a frame; false when the connection is broken.
func (c *frameConn) send(q queued) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	c.queue = append(c.queue, q)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return true
}

// writeLoop writes whatever is queued in one write, until the connection
// breaks.
func (c *frameConn) writeLoop() {
	var batch []queued
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		c.mu.Lock()
		batch, c.queue = c.queue, batch[:0]
		c.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		buf := c.spare[:0]
		for _, q := range batch {
			buf = append(buf, q.frame...)
		}
		c.c.SetWriteDeadline(time.Now().Add(forwardWriteWithin))
		n, err := c.c.Write(buf)
		if cap(buf) <= 1<<20 {
			c.spare = buf
		}
		if err != nil {
			// A request whose frame was not written whole cannot be
			// served: the server reads a frame whole before serving it.
			c.mu.Lock()
			for _, q := range batch {
				if n < len(q.frame) {
					c.queue = append(c.queue, q)
				}
				n -= min(n, len(q.frame))
			}
			c.mu.Unlock()
			c.fail(err)
			return
		}
		clear(batch)
	}
}

// readFrame reads one frame's payload.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(l[:])
	if int64(n) > int64(max) {
		return nil, fmt.Errorf("api: a forwarded frame of %d bytes, more than %d", n, max)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

// readAnswers hands each answer to its request, until the connection
// breaks.
func (c *frameConn) readAnswers() {
	br := bufio.NewReaderSize(c.c, 32<<10)
	for {
		b, err := readFrame(br, c.maxFrame)
		var a frameAnswer
		var id uint64
		if err == nil {
			id, a, err = decodeAnswer(b)
		}
		if err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ch != nil {
			ch <- a
		}
	}
}

// roundTrip sends r in a frame and waits for its answer or r's end.
func (c *frameConn) roundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil && r.ContentLength > 0 {
		body = make([]byte, r.ContentLength)
		_, err := io.ReadFull(r.Body, body)
		r.Body.Close()
		if err != nil {
			return nil, &net.OpError{Op: "readfrom", Net: "tcp", Err: err}
		}
	}
	ch := make(chan frameAnswer, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, &net.OpError{Op: "write", Net: "tcp", Err: err}
	}
	c.next++
	id := c.next
	c.pending[id] = ch
	c.mu.Unlock()
	if !c.send(queued{frame: encodeRequest(id, r.Method, r.URL.RequestURI(), r.Header, body), id: id}) {
		// Broken before the frame was queued: it never left.
		return nil, &net.OpError{Op: "write", Net: "tcp", Err: net.ErrClosed}
	}
	select {
	case a := <-ch:
		if a.err != nil {
			return nil, a.err
		}
		return &http.Response{
			Status: strconv.Itoa(a.status) + " " + http.StatusText(a.status), StatusCode: a.status,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: a.header, Body: io.NopCloser(bytes.NewReader(a.body)), ContentLength: int64(len(a.body)),
			Request: r,
		}, nil
	case <-r.Context().Done():
		c.mu.Lock()
		delete(c.pending, id) // its answer, if one comes, is dropped
		c.mu.Unlock()
		return nil, r.Context().Err()
	}
}

// ServeForwards serves the frame connections ln accepts (the server port's
// Forwards) with h, the handler of the port's internal HTTP, until ctx
// ends or ln is closed; every connection is closed before it returns.
func (s *Server) ServeForwards(ctx context.Context, ln net.Listener, h http.Handler) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	maxFrame := int(s.cfg.MaxBodySize) + forwardHeaderRoom
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveFrames(ctx, nc, h, maxFrame)
		}()
	}
}

// serveFrames serves one connection: each request on its own goroutine,
// the answers back in batches.
func (s *Server) serveFrames(ctx context.Context, nc net.Conn, h http.Handler, maxFrame int) {
	c := newFrameConn(nc, maxFrame)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel() // the requests still served see the connection gone, as over HTTP
		c.fail(net.ErrClosed)
		wg.Wait()
	}()
	go func() {
		select {
		case <-ctx.Done():
			c.fail(net.ErrClosed)
		case <-c.done:
		}
	}()
	br := bufio.NewReaderSize(nc, 32<<10)
	nc.SetDeadline(time.Now().Add(handshakeWithin))
	var pre [3]byte // the ForwardByte was read by the port
	if _, err := io.ReadFull(br, pre[:]); err != nil || !bytes.Equal(pre[:], forwardPreamble[1:]) {
		return
	}
	if _, err := nc.Write([]byte{forwardAck}); err != nil || nc.SetDeadline(time.Time{}) != nil {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.writeLoop()
	}()
	local, remote := nc.LocalAddr().String(), nc.RemoteAddr().String()
	// At most maxFramesInFlight requests of one connection are served at
	// once; past that the reader waits, and TCP pushes back on the sender,
	// as HTTP/1.1's one request at a time per connection did.
	inflight := make(chan struct{}, maxFramesInFlight)
	for {
		b, err := readFrame(br, maxFrame)
		if err != nil {
			return
		}
		id, r, err := decodeRequest(ctx, b, local, remote)
		if err != nil {
			s.log.Warn("api: a malformed forwarded frame; closing its connection", "from", remote, "err", err)
			return
		}
		select {
		case inflight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-inflight; wg.Done() }()
			c.send(queued{frame: s.serveFrame(h, id, r)})
		}()
	}
}

// maxFramesInFlight bounds the requests one frame connection has served at
// once: far more than a follower's writers keep waiting (each waits for its
// answer), few enough that one connection cannot start goroutines without
// end.
const maxFramesInFlight = 1024

// handshakeWithin bounds a frame connection's preamble.
const handshakeWithin = 5 * time.Second

// serveFrame runs h on r and answers its encoded answer.
func (s *Server) serveFrame(h http.Handler, id uint64, r *http.Request) (frame []byte) {
	w := &frameWriter{header: http.Header{}}
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("api: panic serving a forwarded request", "path", r.URL.Path, "panic", p)
			frame = encodeAnswer(id, http.StatusInternalServerError, http.Header{}, []byte("internal error\n"))
		}
	}()
	h.ServeHTTP(w, r)
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	hd := w.sent
	if hd.Get("Content-Type") == "" && w.body.Len() > 0 {
		hd.Set("Content-Type", http.DetectContentType(w.body.Bytes()))
	}
	hd.Set("Content-Length", strconv.Itoa(w.body.Len()))
	return encodeAnswer(id, w.status, hd, w.body.Bytes())
}

// frameWriter is the http.ResponseWriter of a request that came in a
// frame: the whole answer is kept and sent when the handler returns.
type frameWriter struct {
	header http.Header
	sent   http.Header // the header as of WriteHeader
	status int
	body   bytes.Buffer
}

func (w *frameWriter) Header() http.Header { return w.header }

func (w *frameWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	w.status, w.sent = code, w.header.Clone()
}

func (w *frameWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.body.Write(b)
}

// Flush has nothing to do: the answer leaves whole.
func (w *frameWriter) Flush() {}

// The encoding of frames.

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendHeader(b []byte, h http.Header) []byte {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	b = binary.AppendUvarint(b, uint64(n))
	for k, vs := range h {
		for _, v := range vs {
			b = appendString(appendString(b, k), v)
		}
	}
	return b
}

// frame fills in the length of a frame built after 4 reserved bytes.
func frame(b []byte) []byte {
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

func encodeRequest(id uint64, method, uri string, h http.Header, body []byte) []byte {
	b := make([]byte, 4, 64+len(uri)+len(body)+64*len(h))
	b = binary.AppendUvarint(b, id)
	b = appendString(appendString(b, method), uri)
	b = appendHeader(b, h)
	return frame(append(b, body...))
}

func encodeAnswer(id uint64, status int, h http.Header, body []byte) []byte {
	b := make([]byte, 4, 64+len(body)+64*len(h))
	b = binary.AppendUvarint(b, id)
	b = binary.AppendUvarint(b, uint64(status))
	b = appendHeader(b, h)
	return frame(append(b, body...))
}

// frameReader decodes a payload; the first error sticks.
type frameReader struct {
	b   []byte
	err error
}

var errBadFrame = errors.New("api: a malformed forwarded frame")

func (r *frameReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errBadFrame
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *frameReader) string() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errBadFrame
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *frameReader) header() http.Header {
	n := r.uvarint()
	// Each value takes at least two bytes: no more than that many.
	if r.err != nil || n > uint64(len(r.b)/2) {
		r.err = errBadFrame
		return nil
	}
	h := make(http.Header, n)
	for range n {
		k, v := r.string(), r.string()
		if r.err != nil {
			return nil
		}
		h[k] = append(h[k], v)
	}
	return h
}

func decodeAnswer(b []byte) (uint64, frameAnswer, error) {
	r := frameReader{b: b}
	id := r.uvarint()
	status := r.uvarint()
	h := r.header()
	if r.err == nil && (status < 100 || status > 999) {
		r.err = errBadFrame
	}
	if r.err != nil {
		return 0, frameAnswer{}, r.err
	}
	return id, frameAnswer{status: int(status), header: h, body: r.b}, nil
}

// decodeRequest makes the request a frame holds, as the port's http.Server
// would have made it from the same bytes.
func decodeRequest(ctx context.Context, b []byte, local, remote string) (uint64, *http.Request, error) {
	fr := frameReader{b: b}
	id := fr.uvarint()
	method, uri := fr.string(), fr.string()
	h := fr.header()
	if fr.err != nil {
		return 0, nil, fr.err
	}
	r, err := http.NewRequestWithContext(ctx, method, "http://"+local+uri, bytes.NewReader(fr.b))
	if err != nil || r.URL.RequestURI() == "" || len(uri) == 0 || uri[0] != '/' {
		return 0, nil, errBadFrame
	}
	r.Header, r.RequestURI, r.RemoteAddr = h, uri, remote
	if host := h.Get("Host"); host != "" {
		r.Host = host
	}
	r.ContentLength = int64(len(fr.b))
	if r.ContentLength == 0 {
		r.Body = http.NoBody
	}
	return id, r, nil
}
