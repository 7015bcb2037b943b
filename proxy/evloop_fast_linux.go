//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/lb"
)

// The event loop's fast path serves the common request on the loop
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
	evClient   = 0
	evUpstream = 1
	evWake     = 2
)

const (
	fastInSize  = 16 << 10 // client bytes read at once; a request larger than this takes the goroutines
	fastRespMax = 64 << 10 // a response (head and body) larger than this is streamed by a goroutine
)

var errRespTooLarge = errors.New("proxy: response header too large")

// fastLoop is the fast path's state in a loop. Only the loop goroutine
// touches it, but for closing and abort.
type fastLoop struct {
	on     bool
	wakefd int
	cfg    lb.Config

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

func (l *loop) initFast() error {
	p := l.p
	f := &l.fast
	f.wakefd = -1
	f.on = !p.redirect && p.acme == nil
	f.cfg = p.bal.Config()
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
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(fd), Pad: evWake}
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
	case evUpstream:
		if int(ev.Fd) < len(l.fast.ups) {
			if uc := l.fast.ups[ev.Fd]; uc != nil {
				l.upEvent(uc, ev.Events)
			}
		}
	case evWake:
		var b [8]byte
		unix.Read(l.fast.wakefd, b[:])
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
	n, err := unix.Read(int(c.fd), fr.in[fr.end:])
	for err == unix.EINTR {
		n, err = unix.Read(int(c.fd), fr.in[fr.end:])
	}
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
			k, err := unix.Write(int(c.fd), out[n:])
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

// attempt sends fr's request to a backend of its pool, as serve's
// attempts do. It reports true when the request was answered without a
// wait and fr goes on with the next one.
func (l *loop) attempt(fr *fastReq) bool {
	p := l.p
	if fr.n == 0 {
		// The request as HostClient.Do would send it.
		req := &fr.ctx.Request
		req.URI().DisablePathNormalizing = true
		f := &l.fast
		f.sink.b = fr.out[:0]
		f.bw.Reset(&f.sink)
		err := req.Write(f.bw)
		if err == nil {
			err = f.bw.Flush()
		}
		f.bw.Reset(nil)
		fr.out, f.sink.b = f.sink.b, nil
		if err != nil {
			fr.err = err
			return l.answerUnavailable(fr)
		}
	}
	for fr.n < p.cfg.Tries {
		if fr.n > 0 && p.cfg.TryTimeout > 0 && time.Since(fr.st.start) > p.cfg.TryTimeout {
			break
		}
		b := fr.st.pool.Pick(fr.tried[:fr.n])
		if b == nil {
			break
		}
		fr.tried[fr.n] = b
		fr.n++
		fr.stale = false
		err := l.send(fr, b, false)
		if err == nil {
			return false // the backend's events go on with it
		}
		if err == errNotIP {
			l.fast.handed.Add(1)
			l.workers.Add(1)
			go l.finishBlocking(fr)
			return false
		}
		fr.err = err
		if !p.tryFailed(fr.st.r, b, &fr.ctx.Request, fr.n, err) {
			break
		}
	}
	return l.answerUnavailable(fr)
}

// answerUnavailable answers 502 or 504 for fr's request.
func (l *loop) answerUnavailable(fr *fastReq) bool {
	l.p.unavailable(&fr.ctx, &fr.st, fr.err, fr.tried[:fr.n])
	return l.respond(fr, nil)
}

var errNotIP = errors.New("proxy: backend address is not an IP address")

// send starts fr's request on b: on a kept-alive connection unless fresh,
// else on a new one.
func (l *loop) send(fr *fastReq, b *lb.Backend, fresh bool) error {
	f := &l.fast
	var uc *upConn
	if cs := f.idle[b]; len(cs) > 0 && !fresh {
		uc = cs[len(cs)-1]
		cs[len(cs)-1] = nil
		if len(cs) == 1 {
			delete(f.idle, b)
		} else {
			f.idle[b] = cs[:len(cs)-1]
		}
		fr.reused = true
	} else {
		var err error
		if uc, err = l.dial(b); err != nil {
			return err
		}
		fr.reused = false
	}
	uc.fr, fr.up = fr, uc
	fr.sent, fr.rb, fr.head, fr.body = 0, fr.rb[:0], 0, 0
	l.track(fr)
	if uc.connecting {
		fr.deadline = time.Now().Add(f.cfg.ConnectTimeout).UnixNano()
		return nil
	}
	if err := l.upWrite(fr); err != nil {
		l.untrack(fr)
		uc.fr, fr.up = nil, nil
		l.closeUp(uc)
		if fr.reused && !fr.stale && l.staleOK(fr, err) {
			fr.stale = true
			return l.send(fr, b, true)
		}
		return err
	}
	return nil
}

// dial opens a non-blocking connection to b, in the loop's epoll set.
func (l *loop) dial(b *lb.Backend) (*upConn, error) {
	ap, err := netip.ParseAddrPort(b.Addr())
	if err != nil {
		return nil, errNotIP
	}
	f := &l.fast
	if f.open[b] >= f.cfg.MaxConnsPerBackend {
		// The balancer's limit, counted per loop: as HostClient answers
		// with no wait (the loop does not wait), the request goes to
		// another instance, and the backend is not held to fail.
		return nil, fasthttp.ErrNoFreeConns
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	var sa unix.Sockaddr
	family := unix.AF_INET
	if ap.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, &lb.DialError{Addr: b.Addr(), Err: os.NewSyscallError("socket", err)}
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	connecting := false
	err = unix.Connect(fd, sa)
	for err == unix.EINTR {
		err = unix.Connect(fd, sa)
	}
	switch err {
	case nil:
	case unix.EINPROGRESS:
		connecting = true
	default:
		unix.Close(fd)
		return nil, &lb.DialError{Addr: b.Addr(), Err: os.NewSyscallError("connect", err)}
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd), Pad: evUpstream}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return nil, &lb.DialError{Addr: b.Addr(), Err: os.NewSyscallError("epoll_ctl", err)}
	}
	uc := &upConn{fd: int32(fd), b: b, connecting: connecting}
	f.open[b]++
	for fd >= len(f.ups) {
		f.ups = append(f.ups, make([]*upConn, max(len(f.ups), 64))...)
	}
	f.ups[fd] = uc
	return uc, nil
}

// closeUp closes an upstream connection (closing takes it out of the
// epoll set).
func (l *loop) closeUp(uc *upConn) {
	l.forget(uc)
	unix.Close(int(uc.fd))
	uc.fd = -1
}

// forget takes uc out of the loop's tables.
func (l *loop) forget(uc *upConn) {
	f := &l.fast
	if int(uc.fd) < len(f.ups) && f.ups[uc.fd] == uc {
		f.ups[uc.fd] = nil
		if f.open[uc.b]--; f.open[uc.b] <= 0 {
			delete(f.open, uc.b)
		}
	}
}

// detachUp takes uc out of the loop: its descriptor is a goroutine's now.
func (l *loop) detachUp(uc *upConn) int {
	l.forget(uc)
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(uc.fd), nil)
	fd := int(uc.fd)
	uc.fd = -1
	return fd
}

func (l *loop) track(fr *fastReq) {
	if !fr.inReqs {
		fr.inReqs = true
		l.fast.reqs = append(l.fast.reqs, fr)
	}
}

func (l *loop) untrack(fr *fastReq) {
	if !fr.inReqs {
		return
	}
	fr.inReqs = false
	fr.deadline = 0
	rs := l.fast.reqs
	for i, x := range rs {
		if x == fr {
			rs[i] = rs[len(rs)-1]
			rs[len(rs)-1] = nil
			l.fast.reqs = rs[:len(rs)-1]
			return
		}
	}
}

// staleOK reports whether a kept-alive connection's failure before any
// byte of an answer is the backend having closed it while it sat in the
// pool, to be tried once more on a fresh one (lb's retryStaleConn).
func (l *loop) staleOK(fr *fastReq, err error) bool {
	if len(fr.rb) > 0 || !lb.Idempotent(fr.ctx.Request.Header.Method()) {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}

// upWrite sends what is left of fr's request.
func (l *loop) upWrite(fr *fastReq) error {
	uc := fr.up
	for fr.sent < len(fr.out) {
		k, err := unix.Write(int(uc.fd), fr.out[fr.sent:])
		if k > 0 {
			fr.sent += k
		}
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			if wt := l.fast.cfg.WriteTimeout; wt > 0 {
				fr.deadline = time.Now().Add(wt).UnixNano()
			} else {
				fr.deadline = 0
			}
			return nil
		case err != nil:
			return os.NewSyscallError("write", err)
		}
	}
	if rt := l.fast.cfg.ReadTimeout; rt > 0 {
		fr.deadline = time.Now().Add(rt).UnixNano()
	} else {
		fr.deadline = 0
	}
	return nil
}

// upEvent handles an event of an upstream connection.
func (l *loop) upEvent(uc *upConn, events uint32) {
	fr := uc.fr
	if fr == nil {
		l.idleEvent(uc, events)
		return
	}
	if uc.connecting {
		if events&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		errno, err := unix.GetsockoptInt(int(uc.fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && errno != 0 {
			err = unix.Errno(errno)
		}
		if err != nil {
			l.upError(fr, &lb.DialError{Addr: uc.b.Addr(), Err: os.NewSyscallError("connect", err)})
			return
		}
		uc.connecting = false
	}
	if fr.sent < len(fr.out) {
		if err := l.upWrite(fr); err != nil {
			l.upError(fr, err)
			return
		}
		if fr.sent < len(fr.out) {
			return
		}
	}
	l.upRead(fr)
}

// idleEvent: a kept-alive connection in the pool became readable or was
// closed. An event left over from its last response finds nothing.
func (l *loop) idleEvent(uc *upConn, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return
	}
	var b [1]byte
	_, _, err := unix.Recvfrom(int(uc.fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err == unix.EAGAIN {
		return
	}
	f := &l.fast
	cs := f.idle[uc.b]
	for i, x := range cs {
		if x == uc {
			copy(cs[i:], cs[i+1:])
			cs[len(cs)-1] = nil
			if len(cs) == 1 {
				delete(f.idle, uc.b)
			} else {
				f.idle[uc.b] = cs[:len(cs)-1]
			}
			break
		}
	}
	l.closeUp(uc)
}

// upError ends fr's attempt on its backend with err: once more on a fresh
// connection if a kept-alive one was found closed, else as serve's
// attempts do.
func (l *loop) upError(fr *fastReq, err error) {
	l.untrack(fr)
	uc := fr.up
	if uc != nil {
		uc.fr, fr.up = nil, nil
		l.closeUp(uc)
	}
	b := fr.tried[fr.n-1]
	if fr.reused && !fr.stale && l.staleOK(fr, err) {
		fr.stale = true
		if err = l.send(fr, b, true); err == nil {
			return
		}
	}
	fr.err = err
	var sync bool
	if l.p.tryFailed(fr.st.r, b, &fr.ctx.Request, fr.n, err) {
		sync = l.attempt(fr)
	} else {
		sync = l.answerUnavailable(fr)
	}
	if sync {
		l.resume(fr)
	}
}

// upRead reads the backend's response to fr.
func (l *loop) upRead(fr *fastReq) {
	uc := fr.up
	for {
		if len(fr.rb) == cap(fr.rb) {
			if cap(fr.rb) >= fastRespMax {
				l.streamUp(fr)
				return
			}
			fr.rb = append(fr.rb, make([]byte, min(2*cap(fr.rb), fastRespMax)-len(fr.rb))...)[:len(fr.rb)]
		}
		space := fr.rb[len(fr.rb):cap(fr.rb)]
		n, err := unix.Read(int(uc.fd), space)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			l.upError(fr, os.NewSyscallError("read", err))
			return
		case n == 0:
			if len(fr.rb) == 0 {
				l.upError(fr, io.EOF)
			} else {
				l.upError(fr, io.ErrUnexpectedEOF)
			}
			return
		}
		fr.rb = fr.rb[:len(fr.rb)+n]
		if rt := l.fast.cfg.ReadTimeout; rt > 0 {
			fr.deadline = time.Now().Add(rt).UnixNano()
		}
		switch done, extra, err := l.complete(fr); {
		case err != nil:
			l.upError(fr, err)
			return
		case done == respStream:
			l.streamUp(fr)
			return
		case done == respDone:
			l.upDone(fr, extra)
			return
		}
		if n < len(space) {
			if fr.head > 0 && fr.body < 0 {
				// A chunked response the backend paused in (a flush, a
				// stream of events) reaches the client as it comes, as on
				// the goroutines: a goroutine streams it.
				l.streamUp(fr)
			}
			return // drained: the next bytes make an edge
		}
	}
}

// The results of complete.
const (
	respMore = iota
	respDone
	respStream
)

// complete parses what fr.rb holds of the response: the head once it is
// all there, then whether the body is.
func (l *loop) complete(fr *fastReq) (state int, extra bool, err error) {
	rb := fr.rb
	resp := &fr.ctx.Response
	if fr.head == 0 {
		i := bytes.Index(rb, crlf2)
		if i < 0 {
			if len(rb) >= l.fast.cfg.MaxResponseHeaderSize {
				return 0, false, errRespTooLarge
			}
			return respMore, false, nil
		}
		resp.Reset()
		resp.Header.SetNoDefaultContentType(true)
		resp.Header.DisableNormalizing()
		f := &l.fast
		f.brd.Reset(rb[:i+4])
		f.br.Reset(&f.brd)
		err := resp.Header.Read(f.br)
		f.br.Reset(nil)
		if err != nil {
			return 0, false, err
		}
		fr.head = i + 4
		sc := resp.Header.StatusCode()
		switch {
		case sc < 200:
			return respStream, false, nil
		case fr.ctx.Request.Header.IsHead() || sc == fasthttp.StatusNoContent || sc == fasthttp.StatusNotModified:
			resp.SkipBody = fr.ctx.Request.Header.IsHead()
			fr.body = 0
		default:
			switch cl := resp.Header.ContentLength(); {
			case cl >= 0:
				if fr.head+cl > fastRespMax {
					return respStream, false, nil
				}
				fr.body = cl
			case cl == -1:
				fr.body = -1
			default:
				return respStream, false, nil // to the connection's close
			}
		}
	}
	if fr.body >= 0 {
		end := fr.head + fr.body
		if len(rb) < end {
			return respMore, false, nil
		}
		if fr.body > 0 {
			resp.SetBody(rb[fr.head:end])
		}
		return respDone, len(rb) > end, nil
	}
	// Chunked: all chunks there, and no trailer?
	body := resp.BodyWriter()
	resp.ResetBody()
	pos := fr.head
	for {
		j := bytes.Index(rb[pos:], crlf2[:2])
		if j < 0 {
			if len(rb) >= fastRespMax {
				return respStream, false, nil
			}
			return respMore, false, nil
		}
		line := rb[pos : pos+j]
		if k := bytes.IndexByte(line, ';'); k >= 0 {
			line = line[:k]
		}
		size, ok := parseHex(bytes.TrimRight(line, " \t"))
		if !ok {
			return 0, false, errors.New("proxy: bad chunk size from backend")
		}
		pos += j + 2
		if size == 0 {
			if len(rb) < pos+2 {
				return respMore, false, nil
			}
			if rb[pos] != '\r' || rb[pos+1] != '\n' {
				return respStream, false, nil // trailers
			}
			pos += 2
			resp.Header.SetContentLength(len(resp.Body()))
			return respDone, len(rb) > pos, nil
		}
		if len(rb) < pos+size+2 {
			if pos+size+2 > fastRespMax {
				return respStream, false, nil
			}
			return respMore, false, nil
		}
		if rb[pos+size] != '\r' || rb[pos+size+1] != '\n' {
			return 0, false, errors.New("proxy: bad chunk from backend")
		}
		body.Write(rb[pos : pos+size])
		pos += size + 2
	}
}

// parseHex reads a chunk size.
func parseHex(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 8 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | int(c-'0')
		case c >= 'a' && c <= 'f':
			n = n<<4 | int(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n<<4 | int(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// upDone: the backend answered fr's request in full. Its connection goes
// back to the pool (unless either side ends it) and the response to the
// client.
func (l *loop) upDone(fr *fastReq, extra bool) {
	l.untrack(fr)
	uc := fr.up
	uc.fr, fr.up = nil, nil
	resp := &fr.ctx.Response
	if extra || resp.Header.ConnectionClose() || fr.ctx.Request.Header.ConnectionClose() || l.fast.closing.Load() {
		l.closeUp(uc)
	} else {
		uc.idleSince = time.Now().UnixNano()
		l.fast.idle[uc.b] = append(l.fast.idle[uc.b], uc)
	}
	b := fr.tried[fr.n-1]
	b.Succeed()
	cleanResponse(&resp.Header)
	l.p.access(&fr.ctx, fr.st.origURI, fr.st.start, fr.st.r, b, fr.n)
	if l.respond(fr, b) {
		l.resume(fr)
	}
}

// streamUp gives fr, its backend connection and the bytes read from it to
// a goroutine that streams the response.
func (l *loop) streamUp(fr *fastReq) {
	l.untrack(fr)
	uc := fr.up
	uc.fr, fr.up = nil, nil
	fd := l.detachUp(uc)
	l.fast.handed.Add(1)
	l.workers.Add(1)
	go l.streamResponse(fr, fd)
}

// streamResponse reads the response of fr's backend, the bytes the loop
// read first, with fasthttp's client types, and streams it to the client.
func (l *loop) streamResponse(fr *fastReq, fd int) {
	defer l.workers.Done()
	p := l.p
	b := fr.tried[fr.n-1]
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		b.Release()
		l.closeFast(fr)
		return
	}
	defer nc.Close()
	up := &deadlineReader{c: nc, d: l.fast.cfg.ReadTimeout}
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(fr.rb), up), 4096)
	resp := &fr.ctx.Response
	resp.Reset()
	resp.Header.SetNoDefaultContentType(true)
	resp.Header.DisableNormalizing()
	resp.StreamBody = true
	resp.SkipBody = fr.ctx.Request.Header.IsHead()
	if err = resp.Read(br); err != nil {
		if x, ok := err.(interface{ Timeout() bool }); ok && x.Timeout() {
			err = fasthttp.ErrTimeout
		}
		p.tryFailed(fr.st.r, b, &fr.ctx.Request, fr.n, err)
		p.unavailable(&fr.ctx, &fr.st, err, fr.tried[:fr.n])
		l.finishWrite(fr, nil)
		return
	}
	b.Succeed()
	cleanResponse(&resp.Header)
	p.access(&fr.ctx, fr.st.origURI, fr.st.start, fr.st.r, b, fr.n)
	l.finishWrite(fr, b)
}

// deadlineReader reads with a fresh deadline for each read: the wait for
// the next byte, as lb's connections have it.
type deadlineReader struct {
	c net.Conn
	d time.Duration
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.d > 0 {
		r.c.SetReadDeadline(time.Now().Add(r.d))
	}
	return r.c.Read(p)
}

// finishBlocking makes fr's attempts, from the one just picked, with the
// backends' HostClients, and answers.
func (l *loop) finishBlocking(fr *fastReq) {
	defer l.workers.Done()
	p := l.p
	req, resp := &fr.ctx.Request, &fr.ctx.Response
	for {
		b := fr.tried[fr.n-1]
		err := b.ClientFor(nil).Do(req, resp)
		if err == nil {
			b.Succeed()
			cleanResponse(&resp.Header)
			p.access(&fr.ctx, fr.st.origURI, fr.st.start, fr.st.r, b, fr.n)
			l.finishWrite(fr, b)
			return
		}
		fr.err = err
		if !p.tryFailed(fr.st.r, b, req, fr.n, err) || fr.n >= p.cfg.Tries ||
			(p.cfg.TryTimeout > 0 && time.Since(fr.st.start) > p.cfg.TryTimeout) {
			break
		}
		nb := fr.st.pool.Pick(fr.tried[:fr.n])
		if nb == nil {
			break
		}
		fr.tried[fr.n] = nb
		fr.n++
	}
	p.unavailable(&fr.ctx, &fr.st, fr.err, fr.tried[:fr.n])
	l.finishWrite(fr, nil)
}

// finishWrite writes fr's response from a goroutine, waiting as long as
// the write timeout allows, ends the request on b (nil: none), and then
// serves the connection as a worker does.
func (l *loop) finishWrite(fr *fastReq, b *lb.Backend) {
	ctx := &fr.ctx
	c := fr.c
	closeConn := fr.closeReq || ctx.Request.Header.ConnectionClose() || ctx.Response.Header.ConnectionClose() || l.fast.closing.Load()
	if closeConn {
		ctx.Response.Header.SetConnectionClose()
	}
	if ctx.IsHead() {
		ctx.Response.SkipBody = true
	}
	if wt := l.p.cfg.WriteTimeout; wt > 0 {
		c.SetWriteDeadline(time.Now().Add(wt))
	}
	bw := bufio.NewWriterSize(c, 4096)
	err := ctx.Response.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	ctx.Response.Reset() // a streamed body's end: its connection is closed by the caller
	if b != nil {
		b.Release()
	}
	fr.off += fr.reqLen
	fr.reqLen = 0
	l.afterGoroutine(fr, closeConn || err != nil)
}

// writeRest writes the rest of a response the client's socket did not
// take at once, then serves the connection as a worker does.
func (l *loop) writeRest(fr *fastReq, rest []byte, b *lb.Backend, closeConn bool) {
	defer l.workers.Done()
	c := fr.c
	if wt := l.p.cfg.WriteTimeout; wt > 0 {
		c.SetWriteDeadline(time.Now().Add(wt))
	}
	_, err := c.Write(rest)
	if b != nil {
		b.Release()
	}
	l.afterGoroutine(fr, closeConn || err != nil)
}

// afterGoroutine closes fr's connection, or serves it on as a worker with
// the bytes not yet served first.
func (l *loop) afterGoroutine(fr *fastReq, closeConn bool) {
	c := fr.c
	if closeConn {
		l.closeFast(fr)
		return
	}
	l.headsFrom(c, fr.in[fr.off:fr.end])
	l.putFR(fr)
	c.SetWriteDeadline(time.Time{})
	c.peek = true
	l.serveConn(c)
}

// closeFastLoop closes the keep-alive connections of the loop's pools:
// the loop has stopped. (Its eventfd stays open until shutdown has
// stopped waking it.)
func (l *loop) closeFastLoop() {
	f := &l.fast
	for b, cs := range f.idle {
		for _, uc := range cs {
			l.closeUp(uc)
		}
		delete(f.idle, b)
	}
}
