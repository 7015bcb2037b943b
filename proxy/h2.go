package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// HTTP2Config is the front door's HTTP/2 side: offered by ALPN on the TLS
// listener (Enabled), and with prior knowledge on the plain listener
// (Config.H2C). The limits bound what one client connection may hold; the
// defaults are Go's and nginx's. Protection against rapid reset
// (CVE-2023-44487: no more handlers run than MaxConcurrentStreams, and a
// connection that queues 4 times as many is closed) and CONTINUATION
// floods (CVE-2024-27316: a header block, continuations included, is
// bounded by MaxHeaderListSize) is net/http's, bounded by these settings.
type HTTP2Config struct {
	Enabled              bool `json:"enabled"`                // the TLS listener offers h2 before http/1.1
	MaxConcurrentStreams int  `json:"max_concurrent_streams"` // streams one connection may have open
	MaxHeaderListSize    int  `json:"max_header_list_size"`   // bytes of one request's header block, decoded
	StreamWindow         int  `json:"stream_window"`          // bytes of request body a stream may have in flight (its flow-control window)
	ConnWindow           int  `json:"conn_window"`            // bytes of request body a connection may have in flight
	MaxFrameSize         int  `json:"max_frame_size"`         // largest frame payload read

	// Server is the HTTP/2 server of the connections: H2ServerLean (the
	// default, also "": pier's own, h2lean.go) or H2ServerGo (net/http's).
	// Connections upgraded from HTTP/1.1 (Upgrade: h2c) are net/http's
	// either way.
	Server string `json:"server"`
}

// defaultHTTP2 returns HTTP/2's defaults.
func defaultHTTP2() HTTP2Config {
	return HTTP2Config{
		Enabled:              true,
		MaxConcurrentStreams: 250,      // Go's default, above the 100 RFC 9113 recommends at least
		MaxHeaderListSize:    16 << 10, // nginx's http2_max_header_size
		StreamWindow:         1 << 20,  // Go's default: 1 MiB
		ConnWindow:           1 << 20,  // Go's default: 1 MiB
		MaxFrameSize:         16 << 10, // the protocol's initial value: 16 KiB
		Server:               H2ServerLean,
	}
}

// Validate reports the first setting out of range, naming it; zero values
// take the defaults.
func (c HTTP2Config) Validate() error { return c.fill() }

func (c *HTTP2Config) fill() error {
	d := defaultHTTP2()
	if c.MaxConcurrentStreams < 0 || c.MaxHeaderListSize < 0 || c.StreamWindow < 0 || c.ConnWindow < 0 || c.MaxFrameSize < 0 {
		return errors.New("proxy: http2: limits must not be negative")
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	if c.MaxHeaderListSize == 0 {
		c.MaxHeaderListSize = d.MaxHeaderListSize
	}
	if c.StreamWindow == 0 {
		c.StreamWindow = d.StreamWindow
	}
	if c.ConnWindow == 0 {
		c.ConnWindow = d.ConnWindow
	}
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = d.MaxFrameSize
	}
	if c.Server == "" {
		c.Server = d.Server
	}
	switch {
	case c.Server != H2ServerLean && c.Server != H2ServerGo:
		return fmt.Errorf("proxy: http2: server %q: want %q or %q", c.Server, H2ServerLean, H2ServerGo)
	case c.MaxFrameSize < 16<<10 || c.MaxFrameSize > 1<<24-1:
		return fmt.Errorf("proxy: http2: max_frame_size %d: want 16384-16777215", c.MaxFrameSize)
	case c.StreamWindow > 1<<31-1 || c.ConnWindow > 1<<31-1:
		return errors.New("proxy: http2: stream_window and conn_window must be below 2 GiB")
	case c.ConnWindow < c.StreamWindow:
		return errors.New("proxy: http2: conn_window must be at least stream_window")
	}
	return nil
}

// h2Front serves the HTTP/2 connections the listeners hand it: net/http's
// server, speaking only HTTP/2, on a queue of connections whose protocol
// was already decided (by ALPN, or by the h2c preface).
type h2Front struct {
	srv  *http.Server
	up   *h2cUpgrades // nil without h2c
	lean *leanFront   // nil: srv serves the queue
	q    *connQueue
	open atomic.Int64 // HTTP/2 client connections open
	done chan struct{}
}

func (p *Proxy) newH2Front() *h2Front {
	c := p.cfg.HTTP2
	var protos http.Protocols
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	f := &h2Front{q: newConnQueue(), done: make(chan struct{})}
	f.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serveH2),
		Protocols:         &protos,
		MaxHeaderBytes:    c.MaxHeaderListSize,
		ReadHeaderTimeout: p.cfg.HeaderTimeout,
		ReadTimeout:       p.cfg.BodyTimeout, // per stream: its whole request body
		WriteTimeout:      p.cfg.WriteTimeout,
		IdleTimeout:       p.cfg.IdleTimeout,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          c.MaxConcurrentStreams,
			MaxReadFrameSize:              c.MaxFrameSize,
			MaxReceiveBufferPerConnection: c.ConnWindow,
			MaxReceiveBufferPerStream:     c.StreamWindow,
		},
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				f.open.Add(1)
			case http.StateClosed, http.StateHijacked:
				f.open.Add(-1)
			}
		},
		ErrorLog: log.New(debugWriter{p}, "", 0),
	}
	if p.cfg.H2C {
		f.up = f.newUpgrades(f.srv.Handler)
	}
	if c.Server == H2ServerLean {
		f.lean = newLeanFront(p, f)
	}
	return f
}

// start serves the queue; the channel is closed when the server is done
// (at once without HTTP/2).
func (f *h2Front) start() <-chan struct{} {
	if f == nil {
		done := make(chan struct{})
		close(done)
		return done
	}
	if f.lean != nil {
		go func() { f.lean.serve(); close(f.done) }()
		return f.done
	}
	go func() { f.srv.Serve(f.q); close(f.done) }()
	return f.done
}

// shutdown sends GOAWAY on every connection, lets streams in progress
// finish until ctx ends, then closes what is left.
func (f *h2Front) shutdown(ctx context.Context) {
	if f == nil {
		return
	}
	upDone := make(chan struct{})
	go func() {
		if f.up != nil {
			f.up.shutdown(ctx)
		}
		close(upDone)
	}()
	if f.lean != nil {
		f.lean.shutdown(ctx)
	} else if err := f.srv.Shutdown(ctx); err != nil {
		f.srv.Close()
	}
	<-upDone
}

func (f *h2Front) openConns() int64 {
	if f == nil {
		return 0
	}
	return f.open.Load()
}

// debugWriter sends net/http's own messages (a client's protocol errors)
// to the debug log: they are the client's doing, not the proxy's.
type debugWriter struct{ p *Proxy }

func (d debugWriter) Write(b []byte) (int, error) {
	d.p.log.Debug(string(bytes.TrimSpace(b)), "from", "http2")
	return len(b), nil
}

// connQueue is a net.Listener fed with connections another goroutine
// accepted and classified.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return &net.TCPAddr{} }

// put hands c to the queue's server, or closes it when the queue is closed.
func (q *connQueue) put(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		c.Close()
	}
}

// splitListener accepts from ln and sorts each connection, in a goroutine
// of its own so that a slow client does not hold up the others, to the
// HTTP/1.1 queue h1 or to HTTP/2; classify returns the connection to hand
// on and whether it speaks HTTP/2, or nil to drop it.
type splitListener struct {
	ln       net.Listener
	h1       *connQueue
	p        *Proxy
	classify func(net.Conn) (net.Conn, bool)

	mu      sync.Mutex
	pending map[net.Conn]struct{} // being classified; closed at shutdown
	closed  bool
	wg      sync.WaitGroup
	done    chan struct{}
}

func (p *Proxy) newSplitListener(ln net.Listener, classify func(net.Conn) (net.Conn, bool)) *splitListener {
	s := &splitListener{ln: ln, h1: newConnQueue(), p: p, classify: classify, pending: map[net.Conn]struct{}{}, done: make(chan struct{})}
	go s.run()
	return s
}

// run accepts until ln is closed, then ends the classifications in
// progress and returns.
func (s *splitListener) run() {
	defer close(s.done)
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.stop()
				return
			}
			// Out of file descriptors, say: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.p.log.Warn("proxy: accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !s.track(c) {
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			hc, h2 := s.classify(c)
			if !s.untrack(c) {
				if hc != nil {
					hc.Close()
				}
				return
			}
			switch {
			case hc == nil:
			case !h2:
				s.h1.put(hc)
			case s.p.h2.open.Load() >= int64(s.p.cfg.MaxConns):
				hc.Close()
			default:
				s.p.h2.q.put(hc)
			}
		}()
	}
}

func (s *splitListener) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.pending[c] = struct{}{}
	return true
}

// untrack reports false when shutdown closed c meanwhile.
func (s *splitListener) untrack(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	delete(s.pending, c)
	return true
}

func (s *splitListener) stop() {
	s.mu.Lock()
	s.closed = true
	for c := range s.pending {
		c.Close()
	}
	s.mu.Unlock()
	s.h1.Close() // before waiting: a classified connection may be waiting to be handed on
	s.wg.Wait()
}

// close closes the listener and waits for run to return.
func (s *splitListener) close() {
	s.ln.Close()
	<-s.done
}

// classifyTLS completes the handshake and sorts by the protocol ALPN chose.
func (p *Proxy) classifyTLS(c net.Conn) (net.Conn, bool) {
	tc := c.(*tls.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.HeaderTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		p.log.Debug("TLS handshake failed", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return nil, false
	}
	h2 := tc.ConnectionState().NegotiatedProtocol == "h2"
	if bc, ok := tc.NetConn().(*batchConn); ok && h2 && p.h2.lean == nil {
		bc.start() // the lean server batches above TLS instead
	}
	return tc, h2
}

// h2Preface is what an HTTP/2 client with prior knowledge sends first.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// classifyH2C reads as much of a plain connection's first bytes as it
// takes to tell the HTTP/2 preface from an HTTP/1.1 request line: one
// byte for most requests ("GET", not "PRI"), all 24 for HTTP/2. The bytes
// read are replayed to whichever server gets the connection.
func (p *Proxy) classifyH2C(c net.Conn) (net.Conn, bool) {
	var buf [len(h2Preface)]byte
	n := 0
	c.SetReadDeadline(time.Now().Add(p.cfg.HeaderTimeout))
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if !bytes.HasPrefix([]byte(h2Preface), buf[:n]) {
			break
		}
		if err != nil {
			if n == 0 {
				c.Close()
				return nil, false
			}
			break // the HTTP/1.1 server answers what there is (a timeout, a 400)
		}
	}
	c.SetReadDeadline(time.Time{})
	pc := &prefaceConn{Conn: c, head: append([]byte(nil), buf[:n]...)}
	if n == len(buf) && string(buf[:]) == h2Preface {
		return &h2cConn{Conn: newBatchConn(c, true), r: bufio.NewReaderSize(pc, h2cReadBuf)}, true
	}
	return pc, false
}

// h2cReadBuf is the read buffer of a plain HTTP/2 connection.
const h2cReadBuf = 4 << 10

// h2cConn is a plain HTTP/2 connection read through a buffer: net/http's
// HTTP/2 server reads a frame's 9-byte header and its payload in two
// reads, each a system call on a bare TCP connection (a TLS connection
// buffers by record). With the buffer, one read takes in every frame that
// has arrived. Its writes are batched (batchConn).
type h2cConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *h2cConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// prefaceConn replays the bytes read to classify a connection.
type prefaceConn struct {
	net.Conn
	head []byte
}

func (c *prefaceConn) Read(b []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(b, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// WriteTo keeps io.Copy from the connection to its fallback once the head is
// replayed; declared so that an embedded *net.TCPConn's does not skip it.
func (c *prefaceConn) WriteTo(w io.Writer) (int64, error) {
	n, err := w.Write(c.head)
	c.head = c.head[n:]
	if err != nil {
		return int64(n), err
	}
	m, err := io.Copy(w, c.Conn)
	return int64(n) + m, err
}
