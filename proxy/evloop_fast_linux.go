//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/lb"
)

// The event loop's fast path (this file; the instances' side in
// evloop_upstream_linux.go and evloop_answer_linux.go, the hand-overs in
// evloop_handoff_linux.go) serves the common request on the loop
// goroutine itself, as nginx's worker does: no goroutine is woken and no
// socket enters Go's netpoller. When a parked connection has input, the
// loop reads it (a pooled buffer), and a request whose head and body are
// all there (HTTP/1.1, Content-Length or no body, no Upgrade, no Expect)
// is parsed by fasthttp's own parser and goes through the proxy's begin
// (framing.go's checks, the route, the rewrite, the forwarded headers)
// exactly as on the goroutines. Then the loop sends it on a keep-alive
// connection of its own to the backend that least-conn picks: a
// non-blocking socket in the loop's epoll set, from a pool per backend
// that only the loop touches. The backend's answer is read as its bytes
// come; a response whose head and body fit fastRespMax (Content-Length, or
// chunked without trailers) is answered from memory, and written to the
// client without a wait when the socket takes it.
//
// Whatever is not that common case goes to the worker goroutines of
// evloop_linux.go, without a byte lost:
//   - decided before anything was sent upstream (a request not all in, a
//     chunked or large body, an upgrade, HTTP/1.0, a gRPC route, TLS to
//     the instances): the bytes read so far are replayed to fasthttp's
//     server (loop.heads) and the request is served there from scratch;
//   - a response that is large, close-delimited, interim (1xx) or has
//     trailers: the upstream socket and the bytes read from it go to a
//     goroutine that streams the rest with fasthttp's types;
//   - a client that does not take the whole response at once: a goroutine
//     writes the rest under the write timeout;
//   - a backend address that is not an IP (a name to resolve): a goroutine
//     makes the attempts with the backend's HostClient.
// Each of those goroutines then serves the connection as a worker does,
// and it parks as any other.
//
// Retries, passive health, in-flight counts, the access log and metrics
// are the goroutine path's functions (tryFailed, unavailable, access).
// Timeouts (connect, send, the wait for the next byte from the backend)
// are deadlines the loop checks when the sweep wakes it, once a second.

// Kinds of descriptors in the loop's epoll set, in EpollEvent.Pad.
const (
	evLoopClient   = 0
	evLoopUpstream = 1
	evLoopWake     = 2
)

const (
	fastInSize  = 16 << 10 // client bytes read at once; a request larger than this takes the goroutines
	fastRespMax = 64 << 10 // a response (head and body) larger than this is streamed by a goroutine
)

var errRespTooLarge = errors.New("proxy: response header too large")

// fastLoop is the fast path's state in a loop. Only the loop goroutine
// touches it, but for closing and abort.
type fastLoop struct {
	on      bool
	wakefd  int
	cfg     lb.Config
	maxOpen int // connections this loop opens to one backend at most: its share of MaxConnsPerBackend

	ups  []*upConn                 // by descriptor
	open map[*lb.Backend]int       // connections open to each backend, busy or idle
	idle map[*lb.Backend][]*upConn // keep-alive connections, most recently used last
	reqs []*fastReq                // waiting for their backend: their deadlines

	brd  bytes.Reader
	br   *bufio.Reader
	bw   *bufio.Writer
	sink sink

	closing atomic.Bool // shutdown began: answer with Connection: close, stop once nothing is in flight
	abort   atomic.Bool // shutdown's time is up: drop what is in flight
	quit    bool

	frs sync.Pool // *fastReq

	// Requests answered on the loop, and those handed to goroutines at
	// some point (a test's way to see which path served what).
	onLoop, handed atomic.Uint64
}

// sink is an io.Writer appending to b.
type sink struct{ b []byte }

func (s *sink) Write(p []byte) (int, error) { s.b = append(s.b, p...); return len(p), nil }

// upConn is a connection of the loop's own to a backend.
type upConn struct {
	fd         int32
	b          *lb.Backend
	fr         *fastReq // the request it carries; nil: idle in the pool
	connecting bool
	idleSince  int64
}

// fastReq is a connection being served on the loop, and its request in
// progress.
type fastReq struct {
	c        *loopConn
	ctx      fasthttp.RequestCtx
	st       reqState
	in       []byte // client bytes; in[off:end] not yet served
	off, end int
	drained  bool // the last read of the client emptied its socket
	closeReq bool // the client asked to close after this request (read before begin strips Connection)
	reqLen   int  // bytes of the request in progress at in[off:]

	out   []byte // the request as sent to the backend
	sent  int
	up    *upConn
	rb    []byte // bytes of the backend's response read so far
	head  int    // the response head's length, once parsed; 0: not yet
	body  int    // its body's length; -1: chunked
	tried [maxTries]*lb.Backend
	n     int
	err   error

	deadline int64 // unix nanoseconds: connect, send or the next byte from the backend
	reused   bool  // up came from the pool
	stale    bool  // the one retry on a fresh connection after a kept-alive one failed was made
	inReqs   bool
}

func (l *loop) initFast(loops int) error {
	p := l.p
	f := &l.fast
	f.wakefd = -1
	f.on = !p.redirect && p.acme == nil
	f.cfg = p.bal.Config()
	// Each loop keeps its own connections (nothing shared on the hot
	// path): the balancer's limit is split between them.
	f.maxOpen = max(1, (f.cfg.MaxConnsPerBackend+loops-1)/loops)
	f.idle = map[*lb.Backend][]*upConn{}
	f.open = map[*lb.Backend]int{}
	f.br = bufio.NewReaderSize(nil, max(p.cfg.MaxHeaderSize, 4096))
	f.bw = bufio.NewWriterSize(nil, 4096)
	f.frs.New = func() any {
		return &fastReq{in: make([]byte, fastInSize), rb: make([]byte, 0, 8<<10)}
	}
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(fd), Pad: evLoopWake}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("epoll_ctl", err)
	}
	f.wakefd = fd
	return nil
}

// wake makes the loop look at its deadlines and at closing.
func (l *loop) wake() {
	var one = [8]byte{1}
	unix.Write(l.fast.wakefd, one[:])
}

// event handles one event of the loop's epoll set.
func (l *loop) event(ev *unix.EpollEvent) {
	switch ev.Pad {
	case evLoopUpstream:
		if int(ev.Fd) < len(l.fast.ups) {
			if uc := l.fast.ups[ev.Fd]; uc != nil {
				l.upEvent(uc, ev.Events)
			}
		}
	case evLoopWake:
		var b [8]byte
		loopRead(l.fast.wakefd, b[:])
		l.tick()
	default:
		l.ready(ev.Fd)
	}
}

// tick times out what waits too long for a backend, closes keep-alive
// connections idle too long, and stops the loop once shutdown has nothing
// in flight left.
func (l *loop) tick() {
	f := &l.fast
	now := time.Now().UnixNano()
	if f.abort.Load() {
		for len(f.reqs) > 0 {
			fr := f.reqs[len(f.reqs)-1]
			l.untrack(fr)
			if fr.up != nil {
				l.closeUp(fr.up)
				fr.up = nil
			}
			fr.tried[fr.n-1].Release()
			l.closeFast(fr)
		}
	}
	var expired []*fastReq
	for _, fr := range f.reqs {
		if fr.deadline != 0 && now >= fr.deadline {
			expired = append(expired, fr)
		}
	}
	for _, fr := range expired {
		var err error = fasthttp.ErrTimeout
		if fr.up != nil && fr.up.connecting {
			err = &lb.DialError{Addr: fr.up.b.Addr(), Err: os.ErrDeadlineExceeded}
		}
		l.upError(fr, err)
	}
	keep := int64(f.cfg.IdleConnTimeout)
	for b, cs := range f.idle {
		i := 0
		for _, uc := range cs {
			if keep > 0 && now-uc.idleSince > keep || f.closing.Load() {
				l.closeUp(uc)
				continue
			}
			cs[i] = uc
			i++
		}
		clear(cs[i:])
		if i == 0 {
			delete(f.idle, b)
		} else {
			f.idle[b] = cs[:i]
		}
	}
	if f.closing.Load() && len(f.reqs) == 0 {
		f.quit = true
	}
}

func (l *loop) getFR(c *loopConn) *fastReq {
	fr := l.fast.frs.Get().(*fastReq)
	fr.c = c
	fr.off, fr.end, fr.drained = 0, 0, false
	fr.ctx.Init2(c, fasthttpLogger{l.p.log}, false)
	return fr
}

func (l *loop) putFR(fr *fastReq) {
	fr.c = nil
	fr.ctx.Request.Reset()
	fr.ctx.Response.Reset()
	fr.ctx.ResetUserValues()
	fr.ctx.Init2(nil, nil, false)
	fr.st = reqState{}
	fr.up, fr.err = nil, nil
	clear(fr.tried[:])
	if cap(fr.rb) > 8<<10 {
		fr.rb = make([]byte, 0, 8<<10) // a large response's buffer is not kept
	}
	if cap(fr.out) > 16<<10 {
		fr.out = nil
	}
	l.fast.frs.Put(fr)
}

// serveFast serves the woken connection c on the loop.
func (l *loop) serveFast(c *loopConn) {
	l.resume(l.getFR(c))
}

// resume serves fr's connection until a request waits for its backend or
// the connection is handed over or closed; a connection with nothing more
// to read parks.
func (l *loop) resume(fr *fastReq) {
	for {
		if !l.next(fr) {
			return
		}
		c := fr.c
		l.putFR(fr)
		if l.parkConn(c) {
			return
		}
		fr = l.getFR(c) // an edge came meanwhile: read again
	}
}

// The results of fill.
const (
	fillGot = iota
	fillNone
	fillClosed
)

// fill reads what the client sent into fr.in, after the bytes not yet
// served.
func (l *loop) fill(fr *fastReq) int {
	if fr.off > 0 {
		fr.end = copy(fr.in, fr.in[fr.off:fr.end])
		fr.off = 0
	}
	c := fr.c
	if fr.end == len(fr.in) {
		return fillGot // full: serve what is there first
	}
	if !c.acquire() {
		return fillClosed
	}
	n, err := loopRead(int(c.fd), fr.in[fr.end:])
	c.release()
	switch {
	case err == unix.EAGAIN:
		fr.drained = true
		return fillNone
	case err != nil || n == 0:
		return fillClosed
	}
	fr.drained = fr.end+n < len(fr.in)
	fr.end += n
	return fillGot
}

// next serves the requests in fr's bytes one after another. It reports
// true when the bytes ran out and the connection is to be parked (fr is
// still the caller's), false when fr went on elsewhere (a request waits
// for its backend, a goroutine took the connection, it was closed).
func (l *loop) next(fr *fastReq) bool {
	for {
		if fr.off == fr.end {
			if fr.drained {
				return true
			}
			switch l.fill(fr) {
			case fillClosed:
				l.closeFast(fr)
				return false
			case fillNone:
				return true
			}
			continue
		}
		switch l.parse(fr) {
		case parseMore:
			if !fr.drained && (fr.off > 0 || fr.end < len(fr.in)) {
				switch l.fill(fr) {
				case fillClosed:
					l.closeFast(fr)
					return false
				case fillGot:
					continue
				}
			}
			l.handOver(fr) // the rest is the goroutines' to wait for
			return false
		case parseSlow:
			l.handOver(fr)
			return false
		}
		fr.c.served = true
		switch l.p.begin(&fr.ctx, &fr.st, true) {
		case reqSlow:
			l.handOver(fr)
			return false
		case reqDone:
			if !l.respond(fr, nil) {
				return false
			}
		case reqForward:
			if !l.attempt(fr) {
				return false
			}
		}
	}
}

// The results of parse.
const (
	parseOK   = iota
	parseMore // not all there yet
	parseSlow // for the goroutines
)

var crlf2 = []byte("\r\n\r\n")

// parse reads the request at fr.in[fr.off:] into fr.ctx.Request, if it
// is one the loop serves and it is all there.
func (l *loop) parse(fr *fastReq) int {
	buf := fr.in[fr.off:fr.end]
	i := bytes.Index(buf, crlf2)
	if i < 0 {
		if len(buf) >= l.p.cfg.MaxHeaderSize {
			return parseSlow // 431, from fasthttp
		}
		return parseMore
	}
	head := i + 4
	fr.n, fr.err, fr.st = 0, nil, reqState{}
	clear(fr.tried[:])
	ctx := &fr.ctx
	req := &ctx.Request
	req.Reset()
	ctx.Response.Reset()
	ctx.ResetUserValues()
	ctx.Response.Header.SetNoDefaultContentType(true)
	f := &l.fast
	f.brd.Reset(buf[:head])
	f.br.Reset(&f.brd)
	err := req.Header.Read(f.br)
	f.br.Reset(nil)
	if err != nil {
		return parseSlow // its error answer is fasthttp's
	}
	h := &req.Header
	if !h.IsHTTP11() || h.IsConnect() || len(h.Peek("Upgrade")) > 0 || len(h.Peek("Expect")) > 0 {
		return parseSlow
	}
	cl := h.ContentLength()
	switch {
	case cl == -1:
		return parseSlow // chunked
	case cl > 0:
		if p := l.p; p.cfg.MaxBodySize > 0 && int64(cl) > p.cfg.MaxBodySize {
			return parseSlow
		}
		if head+cl > len(fr.in) {
			return parseSlow
		}
		if head+cl > len(buf) {
			return parseMore
		}
		req.SetBody(buf[head : head+cl])
	default:
		cl = 0
	}
	fr.reqLen = head + cl
	fr.closeReq = h.ConnectionClose()
	return parseOK
}

// handOver gives fr's connection to a worker goroutine, the bytes not yet
// served first: fasthttp's server reads the request from them as if from
// the socket.
func (l *loop) handOver(fr *fastReq) {
	l.fast.handed.Add(1)
	c := fr.c
	l.headsFrom(c, fr.in[fr.off:fr.end])
	l.putFR(fr)
	l.dispatch(c)
}

// headsFrom has the next reads of c replay rest.
func (l *loop) headsFrom(c *loopConn, rest []byte) {
	c.got = false
	if len(rest) == 0 {
		return
	}
	l.mu.Lock()
	l.heads[c] = bytes.Clone(rest)
	c.hasHead = true
	l.mu.Unlock()
}

// closeFast closes fr's connection.
func (l *loop) closeFast(fr *fastReq) {
	c := fr.c
	l.putFR(fr)
	l.closeConn(c)
}

// respond writes fr's response to the client as fasthttp's server does
// (Connection: close when either side asked for it or the proxy is
// shutting down; no body for HEAD), then ends the request on b (nil: no
// backend). It reports whether fr goes on with the next request.
func (l *loop) respond(fr *fastReq, b *lb.Backend) bool {
	ctx := &fr.ctx
	closeConn := fr.closeReq || ctx.Request.Header.ConnectionClose() || ctx.Response.Header.ConnectionClose() || l.fast.closing.Load()
	if closeConn {
		ctx.Response.Header.SetConnectionClose()
	}
	if ctx.IsHead() {
		ctx.Response.SkipBody = true
	}
	f := &l.fast
	f.sink.b = f.sink.b[:0]
	f.bw.Reset(&f.sink)
	err := ctx.Response.Write(f.bw)
	if err == nil {
		err = f.bw.Flush()
	}
	f.bw.Reset(nil)
	fr.off += fr.reqLen
	fr.reqLen = 0
	if err != nil {
		if b != nil {
			b.Release()
		}
		l.closeFast(fr)
		return false
	}
	l.fast.onLoop.Add(1)
	out := f.sink.b
	if cap(out) > 64<<10 {
		f.sink.b = nil
	}
	c := fr.c
	n, werr := 0, error(nil)
	if c.acquire() {
		for n < len(out) {
			k, err := loopWrite(int(c.fd), out[n:])
			if k > 0 {
				n += k
			}
			if err != nil && err != unix.EINTR {
				werr = err
				break
			}
		}
		c.release()
	} else {
		werr = net.ErrClosed
	}
	switch {
	case werr == unix.EAGAIN:
		l.fast.handed.Add(1)
		rest := bytes.Clone(out[n:])
		l.workers.Add(1)
		go l.writeRest(fr, rest, b, closeConn)
		return false
	case werr != nil:
		if b != nil {
			b.Release()
		}
		l.closeFast(fr)
		return false
	}
	if b != nil {
		b.Release()
	}
	if closeConn {
		l.closeFast(fr)
		return false
	}
	return true
}
