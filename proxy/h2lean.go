package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The servers of the front door's HTTP/2 connections (HTTP2Config.Server).
const (
	// H2ServerLean is pier's own (this file): one goroutine per connection
	// reads frames, a stream's header block is decoded straight into the
	// fasthttp request the HTTP/1.1 path serves, and streams run on a pool
	// of goroutines kept between streams. gRPC, gRPC-Web and WebSocket
	// streams get a net/http request and response writer (h2leanhttp.go).
	H2ServerLean = "lean"
	// H2ServerGo is net/http's HTTP/2 server.
	H2ServerGo = "go"
)

// leanFront serves the connections of an h2Front with the lean server.
type leanFront struct {
	p       *Proxy
	f       *h2Front
	workers leanWorkers
	watch   leanWatch

	mu      sync.Mutex
	conns   map[*leanConn]struct{}
	closing bool
	wg      sync.WaitGroup // one per connection, done once its reader and streams are
}

func newLeanFront(p *Proxy, f *h2Front) *leanFront {
	lf := &leanFront{p: p, f: f, conns: map[*leanConn]struct{}{}, workers: leanWorkers{jobs: make(chan *leanStream), quit: make(chan struct{})}}
	lf.watch.w = &lf.workers
	return lf
}

// serve accepts from the queue until it is closed.
func (lf *leanFront) serve() {
	for {
		c, err := lf.f.q.Accept()
		if err != nil {
			return
		}
		lc := lf.newConn(c)
		if lc == nil {
			c.Close()
			continue
		}
		go lc.serve()
	}
}

// shutdown sends GOAWAY on every connection, lets the streams in progress
// finish until ctx ends, then closes what is left.
func (lf *leanFront) shutdown(ctx context.Context) {
	lf.f.q.Close()
	lf.mu.Lock()
	lf.closing = true
	conns := make([]*leanConn, 0, len(lf.conns))
	for c := range lf.conns {
		conns = append(conns, c)
	}
	lf.mu.Unlock()
	for _, c := range conns {
		c.drain()
	}
	done := make(chan struct{})
	go func() { lf.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		for _, c := range conns {
			c.nc.Close()
		}
		<-done
	}
	close(lf.workers.quit)
	lf.workers.wg.Wait()
}

// leanWorkers runs streams on goroutines kept between streams: a new
// goroutine per stream starts with a small stack that a proxied request
// grows, by copying, several times.
type leanWorkers struct {
	jobs chan *leanStream // unbuffered: a send succeeds only to an idle worker
	quit chan struct{}
	wg   sync.WaitGroup
}

// leanWorkerIdle is how long an idle worker waits for a stream.
const leanWorkerIdle = 10 * time.Second

func (w *leanWorkers) run(s *leanStream) {
	select {
	case w.jobs <- s:
	default:
		w.wg.Add(1)
		go w.work(s)
	}
}

// work serves s, then the streams sent to it, until it has been idle for
// leanWorkerIdle to twice that. Its timer is armed once per period, not
// per stream: a timer reset on every stream is work (and, as the earliest
// timer, a wake-up of the thread in epoll_wait) that a low rate pays for
// each request.
func (w *leanWorkers) work(s *leanStream) {
	defer w.wg.Done()
	growStack(0)
	t := time.NewTimer(leanWorkerIdle)
	defer t.Stop()
	for {
		s.serve()
		served := true
		for s = nil; s == nil; {
			select {
			case s = <-w.jobs:
			case <-t.C:
				if !served {
					return
				}
				served = false
				t.Reset(leanWorkerIdle)
			case <-w.quit:
				return
			}
		}
	}
}

// leanConn is one client connection.
type leanConn struct {
	lf   *leanFront
	p    *Proxy
	cfg  *HTTP2Config
	nc   net.Conn // closing it ends the reader
	fr   *http2.Framer
	r    io.Reader // what the framer reads, through cr
	cr   countReader
	rbuf *bufio.Reader // its buffer: what is left of the last read
	dec  *hpack.Decoder

	// A stream served on the reader (serveInline): leanInline*.
	inline     atomic.Int32
	inlineTick uint32 // the watch's tick when it began; guarded by the watch's mu

	standIn net.Conn // the streams' stand-in connection for fasthttp (h2serve.go)
	raddr   net.TCPAddr
	tls     *tls.ConnectionState

	// The reader's own state: the header block being read.
	hb leanBlock

	mu        sync.Mutex
	streams   map[uint32]*leanStream // open, as the protocol sees them
	maxID     uint32                 // the highest stream the client opened
	running   int                    // streams whose handler runs, reset ones included
	queue     []*leanStream          // streams waiting for a handler (rapid reset bounds it)
	recvWin   int32                  // bytes of DATA the client may still send on the connection
	unacked   int32                  // bytes consumed, not yet given back by WINDOW_UPDATE
	draining  bool                   // GOAWAY sent: no new streams
	readDone  bool                   // the reader returned
	idle      bool                   // no stream is open
	idleSince time.Time              // since when
	deadline  time.Time              // the read deadline armed

	bc           *batchConn // where the framer writes, its writes deferred
	wmu          sync.Mutex // the writing side: framer writes, send windows
	wcond        sync.Cond  // signalled when a send window grows or the connection ends
	wclosed      bool
	sendWin      int32  // bytes of DATA we may still send on the connection
	peerInitWin  int32  // the client's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame uint32 // the client's SETTINGS_MAX_FRAME_SIZE
	sentTable    bool   // the HPACK dynamic table size update (to 0) is sent
	hbuf         []byte // header block being encoded
}

// leanBlock is a header block (HEADERS and its CONTINUATIONs) being read.
type leanBlock struct {
	active   bool        // a block is being read
	s        *leanStream // the new stream, or the open one whose trailers these are
	trailers bool        // trailers, or a block on a closed stream: decoded and dropped
	size     int         // decoded bytes, as RFC 9113 counts them
	raw      int         // bytes of frames, headers included
	tooBig   bool
	bad      bool // malformed (RFC 9113 8.1.1)
	regular  bool // a regular field was seen: no pseudo-header may follow
}

func (lf *leanFront) newConn(c net.Conn) *leanConn {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.closing {
		return nil
	}
	cfg := &lf.p.cfg.HTTP2
	lc := &leanConn{lf: lf, p: lf.p, cfg: cfg, streams: map[uint32]*leanStream{},
		recvWin: 65535, sendWin: 65535, peerInitWin: 65535, peerMaxFrame: 16 << 10}
	lc.wcond.L = &lc.wmu
	var r io.Reader = c
	w := io.Writer(c)
	lc.nc = c
	switch tc := c.(type) {
	case *tls.Conn:
		// Batch above TLS: frames written together go out as one record.
		st := tc.ConnectionState()
		lc.tls = &st
		lc.rbuf = bufio.NewReaderSize(c, 8<<10)
		r = lc.rbuf
		lc.bc = newBatchConn(tc, true)
		w, lc.nc = lc.bc, lc.bc
	case *h2cConn:
		// Already buffered, and its writes batched (classifyH2C).
		lc.bc, _ = tc.Conn.(*batchConn)
		lc.rbuf = tc.r
	default:
		lc.rbuf = bufio.NewReaderSize(c, 8<<10)
		r = lc.rbuf
	}
	if lc.bc == nil {
		lc.bc = newBatchConn(c, true)
		w, lc.nc = lc.bc, lc.bc
	}
	lc.bc.defer_ = true
	lc.bc.timeout = lf.p.cfg.WriteTimeout // a client that stops reading fails the writes
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		lc.raddr = *a
	}
	if lc.tls != nil {
		lc.standIn = &h2TLSConn{h2Conn: h2Conn{raddr: &lc.raddr}, state: lc.tls}
	} else {
		lc.standIn = &h2Conn{raddr: &lc.raddr}
	}
	lc.r = r
	lc.cr.r = r
	lc.fr = http2.NewFramer(w, &lc.cr)
	lc.fr.SetMaxReadFrameSize(uint32(cfg.MaxFrameSize))
	lc.fr.SetReuseFrames()
	lc.dec = hpack.NewDecoder(4096, lc.emit)
	lc.dec.SetMaxStringLength(cfg.MaxHeaderListSize)
	lf.conns[lc] = struct{}{}
	lf.wg.Add(1)
	lf.f.open.Add(1)
	return lc
}

// errLeanClosed ends the streams of a connection that is gone.
var errLeanClosed = errors.New("proxy: http2: connection closed")

// errLeanReset ends a stream the client reset.
var errLeanReset = errors.New("proxy: http2: stream reset by the client")

// serve reads the connection's frames until it ends.
func (c *leanConn) serve() {
	c.mu.Lock()
	c.armLocked(time.Now().Add(c.p.cfg.HeaderTimeout))
	c.mu.Unlock()
	var pre [len(h2Preface)]byte
	if _, err := io.ReadFull(c.r, pre[:]); err != nil || string(pre[:]) != h2Preface {
		c.finish()
		return
	}
	c.wmu.Lock()
	c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(c.cfg.MaxConcurrentStreams)},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.cfg.StreamWindow)},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: uint32(c.cfg.MaxFrameSize)},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.cfg.MaxHeaderListSize)},
		http2.Setting{ID: http2.SettingEnableConnectProtocol, Val: 1},
	)
	if d := c.cfg.ConnWindow - 65535; d > 0 {
		c.fr.WriteWindowUpdate(0, uint32(d))
	}
	c.unlockAsync()
	c.mu.Lock()
	c.recvWin = int32(max(c.cfg.ConnWindow, 65535))
	c.mu.Unlock()
	c.read(true)
}

// read reads frames until the connection ends, then finishes it, or
// until a stream served on it has handed the reading on to another
// goroutine (takeOver).
func (c *leanConn) read(first bool) {
	for {
		at := c.cr.n
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			if !first && isTimeout(err) && c.cr.n == at && !c.hb.active && c.idleCheck() {
				continue
			}
			c.connError(err)
			c.finish()
			return
		}
		if first {
			first = false
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				c.goAway(http2.ErrCodeProtocol)
				c.finish()
				return
			}
			c.setIdle()
		}
		if err := c.frame(f); err == errLeanHandedOn {
			return
		} else if err != nil {
			c.connError(err)
			c.finish()
			return
		}
	}
}

// connError ends the connection for err: a GOAWAY with its code when it
// is the client's protocol error.
func (c *leanConn) connError(err error) {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		c.goAway(http2.ErrCode(ce))
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAway(http2.ErrCodeFrameSize)
	case isTimeout(err):
		c.goAway(http2.ErrCodeNo) // idle
	}
	if err != io.EOF && !isTimeout(err) {
		c.p.log.Debug("http2: connection ended", "remote", c.nc.RemoteAddr(), "err", err)
	}
}

func (c *leanConn) goAway(code http2.ErrCode) {
	c.mu.Lock()
	c.draining = true
	id := c.maxID
	c.mu.Unlock()
	c.wmu.Lock()
	c.fr.WriteGoAway(id, code, nil)
	c.unlockAsync()
}

// drain sends GOAWAY for shutdown: the streams open finish, then the
// connection closes.
func (c *leanConn) drain() {
	c.goAway(http2.ErrCodeNo)
	c.mu.Lock()
	done := c.running == 0 && len(c.queue) == 0
	c.mu.Unlock()
	if done {
		c.nc.Close()
	}
}

// finish runs when the reader returns: the streams open end, and the
// connection closes once their handlers are done.
func (c *leanConn) finish() {
	c.mu.Lock()
	c.readDone = true
	c.draining = true
	for _, s := range c.streams {
		c.closeStreamLocked(s)
		c.abortLocked(s, errLeanClosed)
	}
	for _, s := range c.queue {
		s.release() // closed above; never run
	}
	c.queue = nil
	last := c.running == 0
	c.mu.Unlock()
	c.wmu.Lock()
	c.wclosed = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
	if last {
		c.close()
	}
}

// close closes the connection; called once, by whichever of the reader
// and the last handler ends last.
func (c *leanConn) close() {
	c.nc.Close()
	c.lf.mu.Lock()
	delete(c.lf.conns, c)
	c.lf.mu.Unlock()
	c.lf.f.open.Add(-1)
	c.lf.wg.Done()
}

// unlockFlush ends a write by a stream's goroutine, which then writes
// what is pending itself unless another goroutine is at it.
func (c *leanConn) unlockFlush() {
	c.wmu.Unlock()
	c.mu.Lock()
	others := c.running > 1
	c.mu.Unlock()
	c.bc.flushNow(others)
}

// unlockAsync ends a write by the reader, which must not block on the
// client: the writing is left to a goroutine.
func (c *leanConn) unlockAsync() {
	c.wmu.Unlock()
	c.bc.flushAsync()
}

// setIdleLocked notes when the connection has no stream open, and arms
// the idle timeout if no read deadline is armed. The deadline is not
// cleared when a stream opens nor moved when the connection is idle again:
// that would be two timer changes per request. One that fires early (on
// a connection busy or idle since) is put right by the reader (idleCheck).
func (c *leanConn) setIdleLocked() {
	idle := len(c.streams) == 0 && c.running == 0
	if idle == c.idle {
		return
	}
	c.idle = idle
	if idle {
		c.idleSince = time.Now()
		if c.deadline.IsZero() {
			c.armLocked(c.idleSince.Add(c.p.cfg.IdleTimeout))
		}
	}
}

func (c *leanConn) armLocked(t time.Time) {
	c.deadline = t
	c.nc.SetReadDeadline(t)
}

// setIdle ends the header timeout at the first SETTINGS: from then on the
// connection has the idle timeout.
func (c *leanConn) setIdle() {
	c.mu.Lock()
	c.idle = len(c.streams) == 0 && c.running == 0
	c.idleSince = time.Now()
	c.armLocked(c.idleSince.Add(c.p.cfg.IdleTimeout))
	c.mu.Unlock()
}

// idleCheck tells a read deadline that fired at a frame's boundary on a
// connection still in use (reading goes on, the deadline moved) from the
// idle timeout (the connection ends).
func (c *leanConn) idleCheck() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !c.idle:
		c.armLocked(time.Time{}) // armed again when it is idle
		return true
	case time.Since(c.idleSince) < c.p.cfg.IdleTimeout:
		c.armLocked(c.idleSince.Add(c.p.cfg.IdleTimeout))
		return true
	}
	return false
}

// countReader counts the bytes the framer has read: a read deadline
// that fires with none of a frame read leaves the framing intact.
type countReader struct {
	r io.Reader
	n int64
}

func (r *countReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += int64(n)
	return n, err
}

func (c *leanConn) frame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.HeadersFrame:
		return c.onHeaders(f)
	case *http2.ContinuationFrame:
		return c.onFragment(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return c.onReset(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.wmu.Lock()
			c.fr.WritePing(true, f.Data)
			c.unlockAsync()
		}
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.draining = true // the client opens no more streams
		c.mu.Unlock()
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		}
	}
	return nil // PRIORITY_UPDATE and unknown frames are ignored
}

func (c *leanConn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			return c.setPeerWindow(int32(s.Val))
		case http2.SettingMaxFrameSize:
			c.wmu.Lock()
			c.peerMaxFrame = s.Val
			c.unlockAsync()
		}
		// The header table size needs nothing: the encoder keeps no
		// dynamic table (h2leanwrite.go).
		return nil
	})
	if err != nil {
		return err
	}
	c.wmu.Lock()
	c.fr.WriteSettingsAck()
	c.unlockAsync()
	return nil
}

// setPeerWindow applies a new SETTINGS_INITIAL_WINDOW_SIZE to the streams
// open (RFC 9113 6.9.2).
func (c *leanConn) setPeerWindow(v int32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	d := int64(v) - int64(c.peerInitWin)
	c.peerInitWin = v
	for _, s := range c.streams {
		n := int64(s.sendWin) + d
		if n > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		s.sendWin = int32(n)
	}
	c.wcond.Broadcast()
	return nil
}

func (c *leanConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	if f.StreamID == 0 {
		c.wmu.Lock()
		defer c.wmu.Unlock()
		n := int64(c.sendWin) + int64(f.Increment)
		if n > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.sendWin = int32(n)
		c.wcond.Broadcast()
		return nil
	}
	// The state stays locked while the window grows: a stream that ends
	// meanwhile (done, on its handler's goroutine or on the reader that
	// served it) goes back to the pool under this lock, and may be a new
	// stream's by the time a window written later would land.
	c.mu.Lock()
	s := c.streams[f.StreamID]
	if s == nil {
		idle := f.StreamID > c.maxID
		c.mu.Unlock()
		if idle {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		return nil // a closed stream's, in flight
	}
	c.wmu.Lock()
	n := int64(s.sendWin) + int64(f.Increment)
	if n <= 1<<31-1 {
		s.sendWin = int32(n)
		c.wcond.Broadcast()
	}
	c.wmu.Unlock()
	c.mu.Unlock()
	if n > 1<<31-1 {
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
	}
	return nil
}

func (c *leanConn) onReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	idle := f.StreamID > c.maxID
	if s != nil {
		c.closeStreamLocked(s)
		c.abortLocked(s, errLeanReset)
	}
	c.mu.Unlock()
	if s == nil && idle {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

// resetStream sends RST_STREAM for a stream error of the client's.
func (c *leanConn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if s := c.streams[id]; s != nil {
		c.closeStreamLocked(s)
		c.abortLocked(s, errLeanReset)
	}
	c.mu.Unlock()
	c.wmu.Lock()
	c.fr.WriteRSTStream(id, code)
	c.unlockAsync()
}

// closeStreamLocked takes s out of the open streams; its handler may run on.
func (c *leanConn) closeStreamLocked(s *leanStream) {
	if s.closed {
		return
	}
	s.closed = true
	delete(c.streams, s.id)
	c.setIdleLocked()
}

func (c *leanConn) onHeaders(f *http2.HeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.hb = leanBlock{active: true, raw: int(f.Length) + 9}
	c.mu.Lock()
	s := c.streams[id]
	switch {
	case s != nil:
		// Trailers: the end of the request.
		if !f.StreamEnded() || s.reqDone {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.hb.trailers = true
		c.hb.s = s
	case id <= c.maxID:
		// A stream closed (reset, say) meanwhile: the block still moves
		// the HPACK state on.
		c.hb.trailers = true
	default:
		c.maxID = id
		s = newLeanStream(c, id)
		s.reqDone = f.StreamEnded()
		c.hb.s = s
	}
	c.mu.Unlock()
	return c.onFragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

// onFragment decodes a piece of a header block. A block is bounded as a
// whole (CVE-2024-27316): past twice max_header_list_size of frames, or
// past it decoded once the block ends, the connection or stream ends.
func (c *leanConn) onFragment(b []byte, end bool) error {
	if !c.hb.active {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	c.hb.raw += len(b) + 9
	if c.hb.raw > 2*c.cfg.MaxHeaderListSize+1024 {
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	if _, err := c.dec.Write(b); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	if !end {
		return nil
	}
	if err := c.dec.Close(); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	hb := c.hb
	c.hb = leanBlock{}
	s := hb.s
	if hb.trailers {
		// The request's trailers are not sent on (HTTP/1.1 to the instance).
		c.mu.Lock()
		if s != nil && c.streams[s.id] == s && !s.reqDone {
			s.reqDone = true
			s.body.end(s.bodyEnd())
		}
		c.mu.Unlock()
		return nil
	}
	if hb.tooBig {
		id, done := s.id, s.reqDone
		s.release()
		c.refuse(id, 431, done)
		return nil
	}
	if hb.bad || !s.validPseudo() {
		id := s.id
		s.release()
		c.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	c.mu.Lock()
	switch {
	case c.draining:
		c.mu.Unlock()
		id := s.id
		s.release()
		c.resetStream(id, http2.ErrCodeRefusedStream)
		return nil
	case len(c.streams) >= c.cfg.MaxConcurrentStreams:
		// Past our SETTINGS_MAX_CONCURRENT_STREAMS.
		c.mu.Unlock()
		id := s.id
		s.release()
		c.resetStream(id, http2.ErrCodeRefusedStream)
		return nil
	}
	s.hasBody = !s.reqDone
	if s.hasBody {
		s.body.init(s)
	}
	c.streams[s.id] = s
	c.setIdleLocked()
	// Rapid reset (CVE-2023-44487): a reset stream's handler counts until
	// it returns; no more handlers than max_concurrent_streams run, the
	// others wait, and a client that makes 4 times as many wait is gone.
	if c.running >= c.cfg.MaxConcurrentStreams {
		if len(c.queue) >= 4*c.cfg.MaxConcurrentStreams {
			c.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
		}
		c.queue = append(c.queue, s)
		c.mu.Unlock()
		return nil
	}
	c.running++
	// A request without a body, alone on the connection and with no more
	// frames read, is served on the reader: handing it to a worker wakes
	// a goroutine, and an idle thread to run it, for each request at a
	// low rate. The reading goes on in another goroutine should the
	// stream hold it up (serveInline).
	inline := !s.hasBody && c.running == 1 && c.rbuf.Buffered() == 0 && !s.viaHTTP()
	if inline {
		c.inline.Store(leanInlineOn)
	}
	c.mu.Unlock()
	if inline {
		return c.serveInline(s)
	}
	c.lf.workers.run(s)
	return nil
}

// The states of a stream served on the reader (leanConn.inline).
const (
	leanInlineOff    = iota
	leanInlineOn     // the reader serves a stream and will read on after it
	leanInlineHanded // another goroutine reads: the one serving ends with its stream
)

// errLeanHandedOn ends a reader whose reading another goroutine took on.
var errLeanHandedOn = errors.New("proxy: http2: reading handed on")

// serveInline serves s on the reader. While it runs nothing reads the
// connection, so the reading is handed on to a new goroutine (takeOver)
// when that would hold the connection up: at once when the answer waits
// for the client's flow-control window, which only a frame read can
// open, and when the stream has run for leanInlineTicks of the watch
// (a slow instance, a long body), so that PINGs, resets, WINDOW_UPDATEs
// and other streams are not left waiting behind it for long.
func (c *leanConn) serveInline(s *leanStream) error {
	c.lf.watch.add(c)
	s.handle()
	c.lf.watch.remove(c)
	// Before done: once the stream is done, a reader that took over may
	// serve the next stream so.
	handed := c.inline.Swap(leanInlineOff) == leanInlineHanded
	c.done(s)
	if handed {
		return errLeanHandedOn
	}
	return nil
}

// takeOver has a new goroutine read the connection in place of the one
// serving a stream on the reader, if one is.
func (c *leanConn) takeOver() {
	if c.inline.CompareAndSwap(leanInlineOn, leanInlineHanded) {
		go c.read(false)
	}
}

// leanWatch hands the reading of a connection on (takeOver) when the
// stream served on its reader has run for a while. It ticks only while
// streams are served so, and stops after a second without any.
type leanWatch struct {
	w     *leanWorkers // its quit and wait group
	mu    sync.Mutex
	conns map[*leanConn]struct{}
	tick  uint32
	used  bool // a stream was served on a reader since the last tick
	on    bool // the loop runs
}

// leanInlineTick is the watch's period, and leanInlineTicks the ticks
// after which a stream served on the reader hands the reading on (10 to
// 20 ms): long past a proxied request's usual time, short against the
// timeouts of a client's PING.
const (
	leanInlineTick  = 10 * time.Millisecond
	leanInlineTicks = 2
)

func (w *leanWatch) add(c *leanConn) {
	w.mu.Lock()
	if w.conns == nil {
		w.conns = map[*leanConn]struct{}{}
	}
	w.conns[c] = struct{}{}
	c.inlineTick = w.tick
	w.used = true
	if !w.on {
		select {
		case <-w.w.quit:
		default:
			w.on = true
			w.w.wg.Add(1)
			go w.loop()
		}
	}
	w.mu.Unlock()
}

func (w *leanWatch) remove(c *leanConn) {
	w.mu.Lock()
	delete(w.conns, c)
	w.mu.Unlock()
}

func (w *leanWatch) loop() {
	defer w.w.wg.Done()
	t := time.NewTicker(leanInlineTick)
	defer t.Stop()
	unused := 0
	for {
		select {
		case <-t.C:
		case <-w.w.quit:
			w.mu.Lock()
			w.on = false
			w.mu.Unlock()
			return
		}
		w.mu.Lock()
		w.tick++
		if w.used || len(w.conns) > 0 {
			unused = 0
		} else if unused++; unused >= int(time.Second/leanInlineTick) {
			w.on = false
			w.mu.Unlock()
			return
		}
		w.used = false
		for c := range w.conns {
			if w.tick-c.inlineTick >= leanInlineTicks {
				delete(w.conns, c)
				c.takeOver()
			}
		}
		w.mu.Unlock()
	}
}

// refuse answers a stream with status code and no body, unread.
func (c *leanConn) refuse(id uint32, code int, reqDone bool) {
	c.wmu.Lock()
	b := c.blockStart()
	b = hpackStatus(b, code)
	c.writeBlock(id, b, true)
	c.hbuf = b[:0]
	if !reqDone {
		c.fr.WriteRSTStream(id, http2.ErrCodeNo)
	}
	c.unlockAsync()
}

// done is a handler's end: the next waiting stream runs.
func (c *leanConn) done(s *leanStream) {
	c.mu.Lock()
	c.running--
	rst := false
	if !s.closed {
		// Answered before the client ended its side: it may stop sending
		// (RFC 9113 8.1).
		rst = !s.reqDone
		c.closeStreamLocked(s)
	}
	c.creditLocked(nil, int32(s.body.unread()))
	id := s.id
	s.release()
	var next *leanStream
	for len(c.queue) > 0 && next == nil {
		next = c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		if next.closed {
			next.release()
			next = nil
		}
	}
	if next != nil {
		c.running++
	}
	c.setIdleLocked()
	last := c.running == 0 && len(c.queue) == 0
	closeNow := last && c.readDone
	drained := last && c.draining && !c.readDone
	c.mu.Unlock()
	if rst {
		c.wmu.Lock()
		c.fr.WriteRSTStream(id, http2.ErrCodeNo)
		c.unlockFlush()
	}
	if next != nil {
		c.lf.workers.run(next)
	}
	if closeNow {
		c.close()
	} else if drained {
		c.nc.Close() // the reader returns and finishes
	}
}

func (c *leanConn) onData(f *http2.DataFrame) error {
	n := int32(f.Length)
	data := f.Data()
	c.mu.Lock()
	if n > c.recvWin {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	c.recvWin -= n
	s := c.streams[f.StreamID]
	if s == nil || s.reqDone || n > s.recvWin {
		idle := f.StreamID > c.maxID
		c.creditLocked(nil, n) // not for any stream: given back at once
		c.mu.Unlock()
		switch {
		case idle:
			return http2.ConnectionError(http2.ErrCodeProtocol)
		case s == nil:
			return nil // a closed stream's, in flight
		case s.reqDone:
			c.resetStream(f.StreamID, http2.ErrCodeStreamClosed)
		default:
			c.resetStream(f.StreamID, http2.ErrCodeFlowControl)
		}
		return nil
	}
	s.recvWin -= n
	if pad := n - int32(len(data)); pad > 0 {
		c.creditLocked(s, pad)
	}
	s.got += int64(len(data))
	if s.clen >= 0 && (s.got > s.clen || (f.StreamEnded() && s.got != s.clen)) {
		c.mu.Unlock()
		c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		return nil
	}
	if len(data) > 0 && !s.body.push(data) {
		c.creditLocked(nil, int32(len(data))) // the handler stopped reading
	}
	if f.StreamEnded() {
		s.reqDone = true
		s.body.end(io.EOF)
	}
	c.mu.Unlock()
	return nil
}

// credit gives back n bytes of a stream's DATA the handler has consumed
// (s nil: only the connection's), with WINDOW_UPDATEs once a quarter of a
// window is owed.
func (c *leanConn) credit(s *leanStream, n int32) {
	c.mu.Lock()
	c.creditLocked(s, n)
	c.mu.Unlock()
}

func (c *leanConn) creditLocked(s *leanStream, n int32) {
	if n <= 0 {
		return
	}
	var sInc, cInc int32
	if s != nil && !s.closed && !s.reqDone {
		s.unacked += n
		if s.unacked >= int32(c.cfg.StreamWindow/4) {
			sInc, s.unacked = s.unacked, 0
			s.recvWin += sInc
		}
	}
	c.unacked += n
	if c.unacked >= int32(c.cfg.ConnWindow/4) {
		cInc, c.unacked = c.unacked, 0
		c.recvWin += cInc
	}
	if sInc == 0 && cInc == 0 {
		return
	}
	c.wmu.Lock()
	if sInc > 0 {
		c.fr.WriteWindowUpdate(s.id, uint32(sInc))
	}
	if cInc > 0 {
		c.fr.WriteWindowUpdate(0, uint32(cInc))
	}
	c.unlockAsync()
}

// emit takes one decoded header field of the block being read.
func (c *leanConn) emit(hf hpack.HeaderField) {
	hb := &c.hb
	if hb.tooBig {
		return
	}
	hb.size += len(hf.Name) + len(hf.Value) + 32
	if hb.size > c.cfg.MaxHeaderListSize {
		hb.tooBig = true
		return
	}
	if hb.trailers || hb.bad || hb.s == nil {
		return
	}
	if !hb.s.field(hf.Name, hf.Value, hb.regular) {
		hb.bad = true
	}
	if len(hf.Name) > 0 && hf.Name[0] != ':' {
		hb.regular = true
	}
}

// leanStream is one request: what the reader decoded into the fasthttp
// request, its body, and the state of the stream. Pooled.
type leanStream struct {
	c  *leanConn
	id uint32

	ctx fasthttp.RequestCtx // the request, headers decoded straight into it

	method, path, scheme, authority, protocol, host, ctype string
	clen                                                   int64 // declared Content-Length; -1: none
	hasBody                                                bool  // the HEADERS did not end the stream
	got                                                    int64 // bytes of body received

	// Guarded by c.mu.
	closed  bool  // no longer open as the protocol sees it
	reqDone bool  // the client ended its side
	recvWin int32 // bytes the client may still send on the stream
	unacked int32

	// Guarded by c.wmu.
	sendWin int32
	reset   bool // the client reset it, or the connection is gone: writes fail
	ended   bool // END_STREAM sent

	seen   uint8              // pseudo-header fields seen (leanPseudo bits)
	route  uint8              // viaHTTP: 0 not asked yet, 1 the fasthttp path, 2 net/http's
	cancel context.CancelFunc // a net/http request's context (h2leanhttp.go); guarded by c.mu

	body leanBody
	buf  []byte // a small body of known length, read whole
}

var leanStreamPool = sync.Pool{New: func() any { return new(leanStream) }}

func newLeanStream(c *leanConn, id uint32) *leanStream {
	s := leanStreamPool.Get().(*leanStream)
	s.c, s.id = c, id
	s.clen = -1
	s.recvWin = int32(c.cfg.StreamWindow)
	s.sendWin = c.peerInitWin // only the reader changes it, and it is the reader here
	return s
}

// release returns s to the pool once its handler, if any, has returned
// and it is closed; called with c.mu held, or before s was published.
func (s *leanStream) release() {
	s.ctx.Request.Reset()
	s.ctx.Response.Reset()
	s.body.reset()
	s.c, s.id = nil, 0
	s.method, s.path, s.scheme, s.authority, s.protocol, s.host, s.ctype = "", "", "", "", "", "", ""
	s.clen, s.got, s.hasBody = -1, 0, false
	s.seen, s.route = 0, 0
	s.closed, s.reqDone, s.recvWin, s.unacked = false, false, 0, 0
	s.sendWin, s.reset, s.ended = 0, false, false
	s.cancel = nil
	if cap(s.buf) > smallBody {
		s.buf = nil
	}
	leanStreamPool.Put(s)
}

// abortLocked fails the stream's writes and body reads, and cancels its
// net/http request: the client reset it, or the connection is gone.
func (c *leanConn) abortLocked(s *leanStream, err error) {
	s.body.end(err)
	if s.cancel != nil {
		s.cancel()
	}
	c.wmu.Lock()
	s.reset = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
}

// bodyEnd is what reading the body returns at its end: EOF, or an error
// when the body is shorter than its Content-Length.
func (s *leanStream) bodyEnd() error {
	if s.clen >= 0 && s.got != s.clen {
		return io.ErrUnexpectedEOF
	}
	return io.EOF
}
