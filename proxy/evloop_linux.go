//go:build linux

package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// The event-loop engine (Config.Engine "eventloop") serves the plain
// listener's HTTP/1.1 connections on Config.Loops loops, one per core by
// default (evloop_loops_linux.go: one goroutine accepts and gives each
// connection to a loop, which keeps it until it is closed). This file is
// one loop. Each connection is in one of two states:
//
//   - parked: idle, between requests (or new, before its first byte). It is
//     a file descriptor in an epoll set of the loop's own, registered
//     once, edge-triggered, for input, plus a loopConn (about a hundred bytes) and the net.TCPConn
//     around its descriptor. No goroutine waits on it and no buffer is
//     held for it.
//   - active: bytes arrived. The loop serves the common request itself
//     (evloop_fast_linux.go); for any other, it hands the connection to a
//     goroutine that runs fasthttp's ServeConn on it, with the request and response
//     types, the strict parsing, limits and timeouts of the goroutine engine,
//     and the proxy's serve path unchanged (framing.go's checks included).
//     fasthttp's buffers come from its pools (ReduceMemoryUsage). Blocking
//     reads and writes in the middle of a request (a streamed body either
//     way, a slow client, a WebSocket tunnel after a hijack) park that
//     goroutine in Go's netpoller as they do on the goroutine engine.
//
// The set is edge-triggered: parking a connection costs no system call.
// An edge that arrives while a connection is active (a pipelined request,
// a body's later segments, the peer's close) marks it pending, and a
// pending connection is served again rather than parked, so no byte goes
// unnoticed; at worst that costs a read that finds nothing.
//
// When a response is written and no byte of a next request is there, the
// server reads in "peek" mode (ConnState's StateIdle turns it on): a
// read that would wait returns errPark instead, fasthttp ends ServeConn
// and gives back its buffers, the Close that follows is not a close, and
// the connection is parked again. Parked connections that wait too long
// (header_timeout before their first request, idle_timeout after one) are
// closed by a sweep once a second.
//
// The epoll set is itself watched by Go's netpoller (its descriptor is
// non-blocking and opened as an os.File): the loop goroutine waits there,
// so the loop holds no OS thread of its own, and a request's arrival wakes
// one epoll_wait in the runtime, which reports both the connection (Go's
// own registration of it) and the epoll set. Measured at 5,000 req/s (CPU
// per request from /proc, two loops, interleaved runs): a loop blocked in
// epoll_wait as a system call of its own cost about the same as this
// before the loop's other calls were raw (evloop_raw_linux.go) and 18 to
// 25% more after; polling its set with no wait for 20 µs before parking
// cost 17 to 26% more, for 50 µs 36 to 43%; serving the events inside the
// netpoller's callback, which saves a poll per wake-up, made no
// difference. What did was making the loop's reads, writes and polls raw
// system calls: 20 to 25% less.
//
// TLS connections (RunTLS) and HTTP/2 stay on the goroutine engine's
// servers; on the plain listener with h2c, a connection is sorted first
// (h2.go) and the HTTP/1.1 ones come here with the bytes read to sort them.
type loop struct {
	g    *loopGroup
	p    *Proxy
	srv  *fasthttp.Server
	ep   *os.File
	epfd int
	rc   syscall.RawConn

	mu      sync.Mutex
	conns   []*loopConn // by file descriptor
	fresh   connList    // parked before their first request: header_timeout
	idle    connList    // parked after a request: idle_timeout
	closing bool

	heads map[*loopConn][]byte
	zones map[*loopConn]string

	n       atomic.Int64   // open connections
	workers sync.WaitGroup // goroutines serving active connections, and idle ones waiting for one

	// Goroutines that served a connection wait here for the next one
	// (last in, first out) rather than end: a new goroutine would start
	// with a small stack and grow it again for every request.
	wmu     sync.Mutex
	idleW   []*worker
	wclosed bool
	bg      sync.WaitGroup // the sweep goroutine
	stop    chan struct{}
	runDone chan struct{} // closed when the epoll goroutine returned

	fast fastLoop // the requests served on the loop itself (evloop_fast_linux.go)
}

// The states of a loopConn.
const (
	lcParked int32 = iota
	lcActive
	lcClosed
)

// loopConn is a client connection of the event-loop engine: a socket of
// the loop's own, accepted with accept4 and never registered with Go's
// netpoller unless a read or write has to wait (then a duplicate of it is,
// as a *net.TCPConn, until it parks). Parked, it is this struct and its
// descriptor: no goroutine, no buffer, none of Go's per-socket state.
//
// While it is active, only the goroutine serving it touches peek, got,
// park, served and hasHead; while it is parked, only the loop (under
// loop.mu) touches it. It is kept to 96 bytes (a size class of Go's
// allocator): what is rare (h2c's replayed bytes, an IPv6 zone) is in maps
// of the loop's, and its list links are descriptors.
type loopConn struct {
	l     *loop
	fd    int32
	state atomic.Int32
	refs  atomic.Int32 // system calls on fd in progress, plus fdClosed once Close was called
	port  uint16       // the client's

	peek    bool // a read that would wait parks the connection instead
	got     bool // the last read since it was woken emptied the socket: a read in peek mode parks without trying
	park    bool // the server let go of it to be parked: Close must not close
	served  bool // a request was read on it: idle_timeout applies, not header_timeout
	hasHead bool // loop.heads holds bytes read before it came here (sorting h2c), replayed first
	hasZone bool // loop.zones holds the zone of its IPv6 address
	is4     bool
	inList  uint8    // the connList it is in (connList.id), 0: none
	pending bool     // an edge arrived while it was active (guarded by loop.mu): serve it again rather than park it
	ip      [16]byte // the client's address

	// Deadlines (unix nanoseconds, 0: none) as the server and handlers set
	// them, and tc: once a read or write has had to wait, a duplicate of
	// the socket in Go's netpoller, which does every read and write, under
	// these deadlines, until the connection parks. Most requests are read
	// and answered with no wait, and cost no timer (fasthttp sets three
	// deadlines for each) and no registration with the netpoller.
	dmu      sync.Mutex
	rdl, wdl int64
	tc       *net.TCPConn

	deadline   int64 // unix nanoseconds after which a parked connection is closed
	prev, next int32 // neighbours in its connList: descriptor+1, 0: none
}

// fdClosed in loopConn.refs: the descriptor is closed, or will be once
// the system calls in progress on it return.
const fdClosed = 1 << 30

// acquire reports whether fd is still open, and keeps it open until
// release.
func (c *loopConn) acquire() bool {
	for {
		r := c.refs.Load()
		if r&fdClosed != 0 {
			return false
		}
		if c.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

func (c *loopConn) release() {
	if c.refs.Add(-1) == fdClosed {
		unix.Close(int(c.fd))
	}
}

// closeFD closes fd once no system call is using it: a goroutine closing
// a connection another is reading must not close a descriptor number the
// kernel may give to the next connection while the read still uses it.
func (c *loopConn) closeFD() {
	for {
		r := c.refs.Load()
		if r&fdClosed != 0 {
			return
		}
		if c.refs.CompareAndSwap(r, r|fdClosed) {
			if r == 0 {
				unix.Close(int(c.fd))
			}
			return
		}
	}
}

// errPark is what a read in peek mode returns instead of waiting. It is
// net.ErrClosed to fasthttp, which then ends ServeConn without an error
// answer even before a connection's first request (a wake-up without a
// byte).
var errPark error = parkError{}

type parkError struct{}

func (parkError) Error() string        { return "proxy: connection parked" }
func (parkError) Is(target error) bool { return target == net.ErrClosed }

// loopEvents are what a connection is registered for, once, edge-triggered:
// input, or the peer's close (so that a closed idle connection is noticed
// and let go).
const loopEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET

// newLoop makes one of the n loops of g.
func newLoop(g *loopGroup, srv *fasthttp.Server, n int) (*loop, error) {
	p := g.p
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	ep := os.NewFile(uintptr(epfd), "pier-epoll") // non-blocking: Go's netpoller watches it
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return nil, err
	}
	l := &loop{g: g, p: p, srv: srv, ep: ep, epfd: epfd, rc: rc, stop: make(chan struct{}), runDone: make(chan struct{})}
	if err := l.initFast(n); err != nil {
		ep.Close()
		return nil, err
	}
	l.fresh.d, l.fresh.id = p.cfg.HeaderTimeout, 1
	l.idle.d, l.idle.id = p.cfg.IdleTimeout, 2
	l.heads = make(map[*loopConn][]byte)
	l.zones = make(map[*loopConn]string)
	return l, nil
}

// start runs the loop, once its group has all its loops.
func (l *loop) start() {
	l.bg.Add(1)
	go l.run()
	go l.sweep()
}

func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		ip := netip.AddrFrom16(a.Addr).Unmap()
		if a.ZoneId != 0 && ip.Is6() {
			ip = ip.WithZone(strconv.FormatUint(uint64(a.ZoneId), 10))
		}
		return netip.AddrPortFrom(ip, uint16(a.Port))
	}
	return netip.AddrPort{}
}

const tooManyConns = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 34\r\n\r\npier: too many open connections\r\n\r\n"

// add takes a connection accepted as a net.Conn: a *net.TCPConn becomes
// a socket of the loop's own (a duplicate of its descriptor; the TCPConn
// is closed).
func (l *loop) add(c net.Conn) {
	var head []byte
	if pc, ok := c.(*prefaceConn); ok {
		c, head = pc.Conn, pc.head
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		// Not a TCP connection of the kernel's (a test's listener, say):
		// the goroutine engine's way.
		l.workers.Add(1)
		go func() { defer l.workers.Done(); l.srv.ServeConn(c) }()
		return
	}
	if l.g.full() {
		tc.SetWriteDeadline(time.Now().Add(time.Second))
		tc.Write([]byte(tooManyConns))
		tc.Close()
		return
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		tc.Close()
		return
	}
	nfd := -1
	raw.Control(func(fd uintptr) { nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	var ap netip.AddrPort
	if ta, ok := tc.RemoteAddr().(*net.TCPAddr); ok {
		ap = ta.AddrPort()
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	tc.Close()
	if err != nil || nfd < 0 {
		l.p.log.Warn("proxy: dup failed", "err", err)
		return
	}
	l.addFD(nfd, ap, head) // the duplicate shares O_NONBLOCK: one open file
}

// addFD takes a new connection: parked until its first byte, or served at
// once when bytes were read from it already.
func (l *loop) addFD(fd int, raddr netip.AddrPort, head []byte) {
	if l.g.full() {
		// As fasthttp answers past its Concurrency (best effort: a
		// new socket's buffer takes it).
		unix.Write(fd, []byte(tooManyConns))
		unix.Close(fd)
		return
	}
	lc := &loopConn{l: l, fd: int32(fd), port: raddr.Port(), is4: raddr.Addr().Is4()}
	lc.ip = raddr.Addr().As16()
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		unix.Close(fd)
		return
	}
	if len(head) > 0 {
		l.heads[lc], lc.hasHead = head, true
	}
	if z := raddr.Addr().Zone(); z != "" {
		l.zones[lc], lc.hasZone = z, true
	}
	for fd >= len(l.conns) {
		l.conns = append(l.conns, make([]*loopConn, max(len(l.conns), 64))...)
	}
	l.conns[fd] = lc
	l.n.Add(1)
	ev := unix.EpollEvent{Events: loopEvents, Fd: lc.fd}
	if len(head) > 0 {
		lc.state.Store(lcActive)
		l.mu.Unlock()
		// In the set from the start: the bytes after head, there already
		// or to come, make an edge that marks it pending.
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			l.p.log.Warn("proxy: epoll_ctl add failed", "err", err)
			l.closeConn(lc)
			return
		}
		l.dispatch(lc)
		return
	}
	lc.deadline = time.Now().Add(l.fresh.d).UnixNano()
	l.push(&l.fresh, lc)
	lc.state.Store(lcParked)
	l.mu.Unlock()
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.p.log.Warn("proxy: epoll_ctl add failed", "err", err)
		l.closeConn(lc)
	}
}

// run waits for parked connections that have input and serves them (on
// the loop, or by handing each to a goroutine), and for the upstream
// connections of the requests it serves, until shutdown has nothing left
// in flight on the loop.
func (l *loop) run() {
	defer close(l.runDone)
	defer l.closeFastLoop()
	events := make([]unix.EpollEvent, 256)
	var n int
	wait := func(fd uintptr) bool { // made once: a closure per round would be an allocation
		for {
			var err error
			n, err = loopEpollPoll(int(fd), events)
			if err != unix.EINTR {
				return n > 0 // none ready: wait for the set's descriptor to be readable
			}
		}
	}
	for {
		if err := l.rc.Read(wait); err != nil {
			return // closed at shutdown
		}
		for i := range events[:n] {
			l.event(&events[i])
		}
		if l.fast.closing.Load() {
			l.tick()
		}
		if l.fast.quit {
			return
		}
	}
}

// ready starts serving the parked connection fd, if it is still parked
// (an event may outlive the connection it was for, and the descriptor may
// have been reused since: the state says whether it is this one's).
func (l *loop) ready(fd int32) {
	l.mu.Lock()
	var c *loopConn
	if int(fd) < len(l.conns) {
		c = l.conns[fd]
	}
	if c == nil {
		l.mu.Unlock()
		return
	}
	if l.closing && c.state.Load() == lcParked {
		l.mu.Unlock()
		l.closeParked(c)
		return
	}
	if !c.state.CompareAndSwap(lcParked, lcActive) {
		// Active: its goroutine looks again before it parks it. (An event
		// for a descriptor closed and reused since costs the new
		// connection a read at most.)
		if c.state.Load() == lcActive {
			c.pending = true
		}
		l.mu.Unlock()
		return
	}
	c.pending = false
	l.remove(c)
	l.mu.Unlock()
	if l.fast.on {
		l.serveFast(c)
		return
	}
	l.dispatch(c)
}

// dispatch has c served by an idle worker goroutine, or a new one.
func (l *loop) dispatch(c *loopConn) {
	c.peek = true // an event without a byte (or a stale one) parks it again
	l.wmu.Lock()
	if n := len(l.idleW); n > 0 {
		w := l.idleW[n-1]
		l.idleW[n-1] = nil
		l.idleW = l.idleW[:n-1]
		l.wmu.Unlock()
		w.c <- c
		return
	}
	l.wmu.Unlock()
	l.workers.Add(1)
	go l.work(c)
}

// worker is a goroutine waiting for a connection to serve.
type worker struct {
	c     chan *loopConn // nil: end
	since int64          // unix nanoseconds since it waits
}

// workerIdle is how long a worker goroutine waits for another connection
// before it ends.
const workerIdle = 2 * time.Second

// work serves c, then waits for the next connection to serve.
func (l *loop) work(c *loopConn) {
	defer l.workers.Done()
	var w *worker
	for {
		l.serveConn(c)
		if w == nil {
			w = &worker{c: make(chan *loopConn, 1)}
		}
		l.wmu.Lock()
		if l.wclosed {
			l.wmu.Unlock()
			return
		}
		w.since = time.Now().UnixNano()
		l.idleW = append(l.idleW, w)
		l.wmu.Unlock()
		if c = <-w.c; c == nil {
			return
		}
	}
}

// serveConn serves requests on c while they come without waiting, then
// parks it, or serves it again if an edge came meanwhile.
func (l *loop) serveConn(c *loopConn) {
	for {
		l.srv.ServeConn(c)
		if !c.park {
			return
		}
		c.park = false
		if l.parkConn(c) {
			return
		}
		c.peek, c.got = true, false
	}
}

// reapWorkers ends the worker goroutines idle since before old (all of
// them when old is 0 and the pool is closed).
func (l *loop) reapWorkers(old int64, close bool) {
	l.wmu.Lock()
	if close {
		l.wclosed = true
	}
	i := 0
	for ; i < len(l.idleW) && (close || l.idleW[i].since < old); i++ {
		l.idleW[i].c <- nil
		l.idleW[i] = nil
	}
	l.idleW = append(l.idleW[:0], l.idleW[i:]...)
	l.wmu.Unlock()
}

// parkConn parks c, unless an edge arrived while it was active: then it
// reports false and c is its caller's still, to serve again.
func (l *loop) parkConn(c *loopConn) bool {
	c.got = false
	c.dmu.Lock()
	tc := c.tc
	c.tc, c.rdl, c.wdl = nil, 0, 0
	c.dmu.Unlock()
	if tc != nil {
		tc.Close() // the duplicate leaves the netpoller; the socket stays open
		// Registered for input again while still active: bytes there
		// already, or coming, make an edge that marks it pending.
		if !l.watch(c, loopEvents) {
			l.closeConn(c)
			return true
		}
	}
	l.mu.Lock()
	if l.closing || c.state.Load() != lcActive {
		l.mu.Unlock()
		l.closeConn(c)
		return true
	}
	if c.pending {
		c.pending = false
		l.mu.Unlock()
		return false
	}
	list := &l.fresh
	if c.served {
		list = &l.idle
		c.deadline = time.Now().Add(l.idle.d).UnixNano()
	}
	// A connection woken without a byte before its first request keeps
	// its deadline: waking it does not buy it time.
	l.push(list, c)
	c.state.Store(lcParked)
	l.mu.Unlock()
	return true
}

// watch sets what the loop's epoll set reports of c (EPOLLET alone: only
// an error or hang-up, once).
func (l *loop) watch(c *loopConn, events uint32) bool {
	if !c.acquire() {
		return false
	}
	ev := unix.EpollEvent{Events: events, Fd: c.fd}
	err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev)
	c.release()
	return err == nil
}

// closeConn closes c, whatever its state; once only.
func (l *loop) closeConn(c *loopConn) error {
	for {
		s := c.state.Load()
		if s == lcClosed {
			return nil
		}
		if c.state.CompareAndSwap(s, lcClosed) {
			return l.closed(c)
		}
	}
}

// closeParked closes c if it is still parked: a connection woken
// meanwhile is its goroutine's to close.
func (l *loop) closeParked(c *loopConn) {
	if c.state.CompareAndSwap(lcParked, lcClosed) {
		l.closed(c)
	}
}

// closed lets go of c, whose state its caller set to lcClosed.
func (l *loop) closed(c *loopConn) error {
	l.mu.Lock()
	if int(c.fd) < len(l.conns) && l.conns[c.fd] == c {
		l.remove(c) // while its neighbours find it by its descriptor
		l.conns[c.fd] = nil
	}
	if c.hasHead {
		delete(l.heads, c)
	}
	if c.hasZone {
		delete(l.zones, c)
	}
	l.mu.Unlock()
	l.n.Add(-1)
	c.dmu.Lock()
	tc := c.tc
	c.tc = nil
	c.dmu.Unlock()
	if tc != nil {
		tc.Close() // a read or write waiting on it returns
	}
	// Closing the descriptor takes it out of the epoll set too.
	c.closeFD()
	return nil
}

// sweep closes parked connections past their deadline, once a second.
func (l *loop) sweep() {
	defer l.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var expired []*loopConn
	for {
		select {
		case <-l.stop:
			return
		case now := <-t.C:
			l.wake() // the fast path's deadlines
			ns := now.UnixNano()
			l.reapWorkers(ns-int64(workerIdle), false)
			l.mu.Lock()
			for _, list := range []*connList{&l.fresh, &l.idle} {
				// Pushed in order of their deadlines, bar a few that were
				// woken without a byte: those wait for the ones before them.
				for list.head != 0 {
					c := l.conns[list.head-1]
					if c.deadline > ns {
						break
					}
					l.remove(c)
					expired = append(expired, c)
				}
			}
			l.mu.Unlock()
			for i, c := range expired {
				l.closeParked(c)
				expired[i] = nil
			}
			expired = expired[:0]
		}
	}
}

// shutdown stops the loop: ln must be closed and serve returned. Parked
// connections are closed at once; active ones after their request, or
// when ctx ends.
func (l *loop) shutdown(ctx context.Context) {
	l.mu.Lock()
	l.closing = true
	var parked []*loopConn
	for _, list := range []*connList{&l.fresh, &l.idle} {
		for fd := list.head; fd != 0; fd = l.conns[fd-1].next {
			parked = append(parked, l.conns[fd-1])
		}
	}
	l.mu.Unlock()
	for _, c := range parked {
		l.closeParked(c)
	}
	// run returns once the requests it serves itself are answered (and
	// has no more to dispatch), or at once when ctx ends first.
	l.fast.closing.Store(true)
	l.wake()
	select {
	case <-l.runDone:
	case <-ctx.Done():
		l.fast.abort.Store(true)
		l.wake()
		<-l.runDone
	}
	close(l.stop)
	l.bg.Wait()
	unix.Close(l.fast.wakefd) // nothing wakes the loop any more
	l.ep.Close()
	l.reapWorkers(0, true) // the busy ones end after their connection
	done := make(chan struct{})
	go func() { l.workers.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	l.mu.Lock()
	var active []*loopConn
	for _, c := range l.conns {
		if c != nil {
			active = append(active, c)
		}
	}
	l.mu.Unlock()
	for _, c := range active {
		l.closeConn(c)
	}
	<-done
}

// Read replays head, then reads. In peek mode a read that would wait
// marks the connection to be parked and returns errPark; so does a read in
// peek mode (after a response) when the last read emptied the socket: a
// byte that came since made an edge, which marks the connection pending,
// so the read that would have found none is saved.
func (c *loopConn) Read(b []byte) (int, error) {
	if c.hasHead && len(b) > 0 {
		l := c.l
		l.mu.Lock()
		h := l.heads[c]
		n := copy(b, h)
		if h = h[n:]; len(h) == 0 {
			delete(l.heads, c)
			c.hasHead = false
		} else {
			l.heads[c] = h
		}
		l.mu.Unlock()
		c.got = false // the socket may hold more: read it before parking
		return n, nil
	}
	if len(b) == 0 {
		return 0, nil
	}
	if c.peek && c.got {
		c.park = true
		return 0, errPark
	}
	c.dmu.Lock()
	tc, dl := c.tc, c.rdl
	c.dmu.Unlock()
	if tc != nil {
		n, err := tc.Read(b)
		c.got = err == nil && n < len(b)
		return n, err
	}
	if dl != 0 && time.Now().UnixNano() >= dl {
		return 0, os.ErrDeadlineExceeded
	}
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	n, err := unix.Read(int(c.fd), b)
	for err == unix.EINTR {
		n, err = unix.Read(int(c.fd), b)
	}
	c.release()
	switch {
	case err == unix.EAGAIN:
		if c.peek {
			c.park = true
			return 0, errPark
		}
		tc, err := c.promote()
		if err != nil {
			return 0, err
		}
		n, err := tc.Read(b)
		c.got = err == nil && n < len(b)
		return n, err
	case err != nil:
		return 0, os.NewSyscallError("read", err)
	case n == 0:
		return 0, io.EOF
	}
	// A read short of b emptied the socket (as nginx assumes under
	// EPOLLET): what comes next makes an edge.
	c.peek, c.got = false, n < len(b)
	return n, nil
}

// Write writes without a wait while the socket takes the bytes, and
// through the netpoller, under the write deadline, once it does not.
func (c *loopConn) Write(b []byte) (int, error) {
	c.dmu.Lock()
	tc, dl := c.tc, c.wdl
	c.dmu.Unlock()
	if tc != nil {
		return tc.Write(b)
	}
	if dl != 0 && time.Now().UnixNano() >= dl {
		return 0, os.ErrDeadlineExceeded
	}
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	n := 0
	var err error
	for n < len(b) {
		var k int
		k, err = unix.Write(int(c.fd), b[n:])
		if k > 0 {
			n += k
		}
		if err != nil && err != unix.EINTR {
			break
		}
		err = nil
	}
	c.release()
	switch {
	case err == unix.EAGAIN:
		tc, err := c.promote()
		if err != nil {
			return n, err
		}
		m, err := tc.Write(b[n:])
		return n + m, err
	case err != nil:
		return n, os.NewSyscallError("write", err)
	}
	return n, nil
}

// promote makes the duplicate of the socket in Go's netpoller that reads
// and writes wait on from now until the connection parks, with the
// deadlines set so far.
func (c *loopConn) promote() (*net.TCPConn, error) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.tc != nil {
		return c.tc, nil
	}
	if c.state.Load() == lcClosed || !c.acquire() {
		return nil, net.ErrClosed
	}
	nfd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	c.release()
	if err != nil {
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(nfd), "")
	fc, err := net.FileConn(f) // a duplicate of its own
	f.Close()
	if err != nil {
		return nil, err
	}
	tc, ok := fc.(*net.TCPConn)
	if !ok {
		fc.Close()
		return nil, errors.New("proxy: not a TCP connection")
	}
	tc.SetReadDeadline(unixTime(c.rdl))
	tc.SetWriteDeadline(unixTime(c.wdl))
	c.tc = tc
	// The netpoller watches it now: edges in the loop's set would only
	// wake the loop to mark it pending (a tunnel's every read). Parking
	// registers it for input again.
	c.l.watch(c, unix.EPOLLET)
	return tc, nil
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (c *loopConn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.rdl = unixNano(t)
	if c.tc != nil {
		return c.tc.SetReadDeadline(t)
	}
	return nil
}

func (c *loopConn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.wdl = unixNano(t)
	if c.tc != nil {
		return c.tc.SetWriteDeadline(t)
	}
	return nil
}

func (c *loopConn) SetDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.rdl, c.wdl = unixNano(t), unixNano(t)
	if c.tc != nil {
		return c.tc.SetDeadline(t)
	}
	return nil
}

// CloseWrite shuts the sending half (a tunnel whose instance is done).
func (c *loopConn) CloseWrite() error {
	c.dmu.Lock()
	tc := c.tc
	c.dmu.Unlock()
	if tc != nil {
		return tc.CloseWrite()
	}
	if !c.acquire() {
		return net.ErrClosed
	}
	defer c.release()
	return os.NewSyscallError("shutdown", unix.Shutdown(int(c.fd), unix.SHUT_WR))
}

// RemoteAddr is the client's address, as accept4 gave it (fasthttp asks
// for it once a request: one allocation, the address's bytes with it).
func (c *loopConn) RemoteAddr() net.Addr {
	ta := &struct {
		net.TCPAddr
		ip [16]byte
	}{ip: c.ip}
	a := &ta.TCPAddr
	a.Port = int(c.port)
	if c.is4 {
		a.IP = ta.ip[12:16:16]
	} else {
		a.IP = ta.ip[:]
	}
	if c.hasZone {
		c.l.mu.Lock()
		a.Zone = c.l.zones[c]
		c.l.mu.Unlock()
	}
	return a
}

// LocalAddr is the address the client connected to.
func (c *loopConn) LocalAddr() net.Addr {
	if c.acquire() {
		sa, err := unix.Getsockname(int(c.fd))
		c.release()
		if err == nil {
			return net.TCPAddrFromAddrPort(sockaddrAddrPort(sa))
		}
	}
	return &net.TCPAddr{}
}

// Close parks a connection fasthttp let go of in peek mode, and closes
// any other.
func (c *loopConn) Close() error {
	if c.park {
		return nil // work parks it once ServeConn has returned
	}
	return c.l.closeConn(c)
}

// connList is a doubly linked list of parked connections, in the order
// they were parked, linked by their descriptors (+1, 0: none) through
// loop.conns; guarded by loop.mu.
type connList struct {
	head, tail int32
	id         uint8
	d          time.Duration
}

func (l *loop) push(list *connList, c *loopConn) {
	c.inList, c.prev, c.next = list.id, list.tail, 0
	if list.tail != 0 {
		l.conns[list.tail-1].next = c.fd + 1
	} else {
		list.head = c.fd + 1
	}
	list.tail = c.fd + 1
}

// remove takes c out of the list it is in, if any.
func (l *loop) remove(c *loopConn) {
	var list *connList
	switch c.inList {
	case l.fresh.id:
		list = &l.fresh
	case l.idle.id:
		list = &l.idle
	default:
		return
	}
	if c.prev != 0 {
		l.conns[c.prev-1].next = c.next
	} else {
		list.head = c.next
	}
	if c.next != 0 {
		l.conns[c.next-1].prev = c.prev
	} else {
		list.tail = c.prev
	}
	c.prev, c.next, c.inList = 0, 0, 0
}
