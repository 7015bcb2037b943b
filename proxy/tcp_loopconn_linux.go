//go:build linux

package proxy

import (
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/lb"
)

// The states of a tcpLoopConn.
const (
	lcHello      uint8 = iota // an SNI listener's connection: reading its ClientHello
	lcConnecting              // connecting to an instance
	lcRelay                   // connected: bytes flow
	lcGone                    // closed, or handed to a goroutine
)

// Why a loop connection ends.
type tcpEnd uint8

const (
	endDone        tcpEnd = iota // EOF from the instance, or an error on either side
	endIdle                      // the route's idle timeout
	endDrained                   // the route's drain timeout
	endTimeout                   // a deadline while reading the hello or connecting (the sweep's mark)
	endUnavailable               // no instance could be reached
	endStop                      // the proxy is closing
)

// tcpSide is one socket of a loop connection, with what epoll last said
// of it: each flag stays set until a call on the socket finds it drained
// (read) or full (write).
type tcpSide struct {
	c       *tcpLoopConn
	fd      int32 // -1: none
	gen     int32 // in its events, below evKind
	rd, wr  bool
	rdhup   bool // the peer's FIN is in: read until EOF even after a short read
	hup     bool // an error or hang-up: while connecting, the connect failed
	watched bool // in the loop's epoll set
}

// tcpDir is one direction's bytes in flight: read from the source, not yet
// all written to the destination. buf is held only while it has bytes.
type tcpDir struct {
	buf    []byte
	off, n int
	pooled bool // buf is the loop's (the replayed hello is not)
	eof    bool // the source sent its FIN
	shut   bool // the FIN was passed on
}

// tcpLoopConn is a TCP route's connection on a loop. Only the loop's
// goroutine touches it, except what tcpLoop.mu guards (state as other
// goroutines see it, idx, the drain fields).
type tcpLoopConn struct {
	lp           *tcpLoop
	rt           *tcpRoute
	l            *tcpListener // an SNI listener's, while its hello is read
	b            *lb.Backend  // the instance connected to (or being connected to)
	client, inst tcpSide
	up, down     tcpDir // client to instance, instance to client
	state        uint8
	queued       bool // in lp.again: its read budget ran out with bytes left
	idx          int  // in lp.conns
	last         int64
	deadline     int64 // of the hello or the connect
	relaying     bool  // guarded by lp.mu: connected and not yet closed (what other goroutines look at)
	drainAt      int64 // guarded by lp.mu; 0: not draining, or no drain timeout
	draining     bool  // guarded by lp.mu
	in, out      int64 // bytes not yet in the metrics
	tries        int
	tried        [maxTries]*lb.Backend
	hello        []byte // the ClientHello read, replayed to the instance
	ended        bool
}

// newConn takes an accepted socket into the loop.
func (lp *tcpLoop) newConn(fd int) *tcpLoopConn {
	c := &tcpLoopConn{lp: lp, last: lp.now}
	c.client = tcpSide{c: c, fd: int32(fd)}
	c.inst = tcpSide{c: c, fd: -1}
	lp.mu.Lock()
	c.idx = len(lp.conns)
	lp.conns = append(lp.conns, c)
	lp.mu.Unlock()
	lp.watch(&c.client)
	return c
}

// watch adds a side's socket to the set, edge-triggered, for both ways.
func (lp *tcpLoop) watch(s *tcpSide) {
	fd := int(s.fd)
	if fd >= len(lp.byFD) {
		lp.byFD = append(lp.byFD, make([]*tcpSide, fd+1-len(lp.byFD)+64)...)
	}
	lp.byFD[fd] = s
	lp.gen = (lp.gen + 1) &^ evKind
	s.gen = lp.gen
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: s.fd, Pad: evConn | s.gen}
	if e := epollCtl(lp.epfd, unix.EPOLL_CTL_ADD, fd, &ev); e != 0 {
		// Without epoll's word the side is never served: mark it broken,
		// so that the next call on it fails and ends the connection.
		s.rd, s.wr, s.hup = true, true, true
		return
	}
	s.watched = true
}

// forget closes a side's socket (which takes it out of the set).
func (lp *tcpLoop) forget(s *tcpSide) {
	if s.fd < 0 {
		return
	}
	if int(s.fd) < len(lp.byFD) && lp.byFD[s.fd] == s {
		lp.byFD[s.fd] = nil
	}
	rawClose(int(s.fd))
	s.fd = -1
	s.watched = false
}

// serve acts on what epoll reported.
func (c *tcpLoopConn) serve() {
	switch c.state {
	case lcHello:
		c.readHello()
	case lcConnecting:
		switch {
		case c.inst.hup:
			c.retry(connectError(int(c.inst.fd)))
		case c.inst.wr:
			c.connected()
		}
	case lcRelay:
		c.relay()
	}
}

// dial connects to the next instance of the route not tried yet, or ends
// the connection when none is left.
func (c *tcpLoopConn) dial() {
	t := c.lp.ls.t
	pool := c.rt.pool(t.p.bal.Table())
	for c.tries < t.p.cfg.Tries {
		b := pool.Pick(c.tried[:c.tries])
		if b == nil {
			break
		}
		ap, err := netip.ParseAddrPort(b.Addr())
		if err != nil {
			// A host name: resolving it would block the loop.
			b.Release()
			c.toGoroutine()
			return
		}
		c.tried[c.tries] = b
		c.tries++
		c.b = b
		fd, connected, err := connectNB(ap)
		if err == nil && !connected {
			// On loopback and most LANs the handshake is over by now:
			// then the connection starts relaying in this turn rather
			// than the next.
			var done bool
			if done, err = connectDone(fd); done && err != nil {
				rawClose(fd)
				err = &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: os.NewSyscallError("connect", err)}
			}
			connected = done && err == nil
		}
		if err != nil {
			c.failed(err)
			continue
		}
		c.inst = tcpSide{c: c, fd: int32(fd)}
		c.lp.watch(&c.inst)
		if connected {
			c.connected()
			return
		}
		c.state = lcConnecting
		c.deadline = c.lp.now + int64(t.p.bal.ConnectTimeout())
		c.lp.setTick(t.p.bal.ConnectTimeout())
		return
	}
	t.met.unavailable(c.rt.stats)
	t.p.log.Warn("tcp route: no instance reachable", "route", c.rt.Listen, "sni", c.rt.SNI, "service", c.rt.Service, "client", peerName(int(c.client.fd)))
	c.close(endUnavailable)
}

// failed counts a failed connect to c.b towards its passive health.
func (c *tcpLoopConn) failed(err error) {
	t := c.lp.ls.t
	b := c.b
	c.b = nil
	b.Release()
	t.met.connectFailed(c.rt.stats)
	if b.Fail(t.p.cfg.MaxFails, t.p.cfg.FailTimeout) {
		t.p.log.Warn("backend out of rotation after failures", "service", c.rt.Service, "addr", b.Addr(), "err", &lb.DialError{Addr: b.Addr(), Err: err})
	}
}

// retry gives up on the instance being connected to and tries the next:
// no byte of the client's was sent to it.
func (c *tcpLoopConn) retry(err error) {
	c.lp.forget(&c.inst)
	c.failed(err)
	c.dial()
}

// timedOut ends the hello's read or the connect whose deadline passed.
func (c *tcpLoopConn) timedOut() {
	switch c.state {
	case lcHello:
		c.refuse("hello_timeout", "")
	case lcConnecting:
		c.retry(&net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded})
	}
}

func (c *tcpLoopConn) connected() {
	t := c.lp.ls.t
	c.b.Succeed()
	t.met.opened(c.rt.stats)
	c.state = lcRelay
	c.lp.mu.Lock()
	c.relaying = true
	c.lp.mu.Unlock()
	c.last = c.lp.now
	c.lp.setTick(c.rt.idle)
	c.lp.setTick(c.rt.drain)
	if len(c.hello) > 0 {
		c.up.buf, c.up.off, c.up.n = c.hello, 0, len(c.hello)
		c.hello = nil
	}
	// Guesses that save a turn of the loop: the new socket's buffer is
	// empty, and a client usually speaks first (a wrong guess costs one
	// call that finds nothing).
	c.inst.wr = true
	c.client.rd = true
	c.relay()
}

// relayBudget bounds the reads one connection makes in a turn, so that a
// busy one cannot hold up the rest of its loop.
const relayBudget = 16

// relay moves what can be moved both ways without waiting. The bytes
// moved go to the metrics at the end of each turn (an atomic add a
// direction), so that they are current as on the goroutine engine.
func (c *tcpLoopConn) relay() {
	defer c.flushBytes()
	budget := relayBudget
	if c.pump(&c.up, &c.client, &c.inst, &budget, true) != nil {
		c.close(endDone)
		return
	}
	if c.up.eof && !c.up.shut && c.up.off == c.up.n {
		// The client is done sending: the instance reads EOF and may
		// still answer.
		c.up.shut = true
		rawShutWR(int(c.inst.fd))
	}
	if c.pump(&c.down, &c.inst, &c.client, &budget, false) != nil {
		c.close(endDone)
		return
	}
	if c.down.eof && c.down.off == c.down.n {
		// The instance is done: nothing more will reach the client, and
		// what the client still sends has nowhere to go.
		if !c.up.eof {
			rawShutWR(int(c.client.fd))
		}
		c.close(endDone)
	}
}

// pump copies src to dst through d until src is drained or dst is full;
// an error is one of a socket's.
func (c *tcpLoopConn) pump(d *tcpDir, src, dst *tcpSide, budget *int, in bool) error {
	for {
		if d.off < d.n {
			if !dst.wr {
				return nil
			}
			want := d.n - d.off
			w, e := rawWrite(int(dst.fd), d.buf[d.off:d.n])
			switch e {
			case 0:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				dst.wr = false
				return nil
			default:
				return e
			}
			d.off += w
			if in {
				c.in += int64(w)
			} else {
				c.out += int64(w)
			}
			if w < want {
				// A short write filled the socket's buffer: epoll says
				// when there is room again.
				dst.wr = false
				return nil
			}
			continue
		}
		if d.buf != nil {
			if d.pooled {
				c.lp.putBuf(d.buf)
			}
			d.buf, d.off, d.n, d.pooled = nil, 0, 0, false
		}
		if d.eof || !src.rd {
			return nil
		}
		if *budget == 0 {
			if !c.queued {
				c.queued = true
				c.lp.again = append(c.lp.again, c)
			}
			return nil
		}
		*budget--
		buf := c.lp.getBuf()
		n, e := rawRead(int(src.fd), buf)
		switch {
		case e == unix.EINTR:
			c.lp.putBuf(buf)
			continue
		case e == unix.EAGAIN:
			c.lp.putBuf(buf)
			src.rd = false
			return nil
		case e != 0:
			c.lp.putBuf(buf)
			return e
		case n == 0:
			c.lp.putBuf(buf)
			d.eof = true
			return nil
		}
		d.buf, d.off, d.n, d.pooled = buf, 0, n, true
		c.last = c.lp.now
		if n < len(buf) && !src.rdhup {
			// A short read emptied the socket: more bytes, or the
			// FIN, are a new edge.
			src.rd = false
		}
	}
}

// close ends the connection: both sockets, the instance's count, the
// metrics.
func (c *tcpLoopConn) close(why tcpEnd) {
	if c.ended {
		return
	}
	c.ended = true
	t := c.lp.ls.t
	lp := c.lp
	relayed := c.state == lcRelay
	c.state = lcGone
	lp.mu.Lock()
	c.relaying = false
	last := len(lp.conns) - 1
	lp.conns[c.idx] = lp.conns[last]
	lp.conns[c.idx].idx = c.idx
	lp.conns[last] = nil
	lp.conns = lp.conns[:last]
	lp.mu.Unlock()
	c.flushBytes()
	for _, d := range []*tcpDir{&c.up, &c.down} {
		if d.buf != nil && d.pooled {
			lp.putBuf(d.buf)
		}
		d.buf = nil
	}
	lp.forget(&c.inst)
	lp.forget(&c.client)
	if c.b != nil {
		c.b.Release()
		c.b = nil
	}
	if relayed {
		t.met.closed(c.rt.stats)
		switch why {
		case endIdle:
			t.met.idled(c.rt.stats)
		case endDrained:
			t.met.drained(c.rt.stats)
		}
	}
}

// flushBytes adds the bytes moved since the last call to the metrics.
func (c *tcpLoopConn) flushBytes() {
	if c.rt == nil {
		return
	}
	t := c.lp.ls.t
	if c.in > 0 {
		t.met.bytes(c.rt.stats, true, int(c.in))
		c.in = 0
	}
	if c.out > 0 {
		t.met.bytes(c.rt.stats, false, int(c.out))
		c.out = 0
	}
}

// toGoroutine hands a connection whose instance has a host name (which
// the loop cannot resolve without blocking) to the goroutine engine.
func (c *tcpLoopConn) toGoroutine() {
	t := c.lp.ls.t
	rt, hello := c.rt, c.hello
	fd := int(c.client.fd)
	if c.client.watched {
		epollCtl(c.lp.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	}
	// The *os.File owns fd from here (its finalizer would close it):
	// close it through f, never raw, and leave the connection without it.
	f := os.NewFile(uintptr(fd), "tcp")
	nc, err := net.FileConn(f) // a duplicate
	c.lp.byFD[fd] = nil
	c.client.fd = -1
	f.Close()
	c.close(endDone)
	if err != nil {
		t.p.log.Warn("tcp route: cannot hand a connection over", "err", err)
		return
	}
	// Not t.track: the loop must never wait for t.mu, which Close holds
	// while it waits for the loops to let go of a listener. The loops end
	// before Run waits for t.wg, and handle refuses a connection once the
	// proxy is closed.
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		t.handle(nc, rt, hello)
	}()
}

// readHello reads an SNI listener's connection until its ClientHello is
// whole, then picks the route by its server name.
func (c *tcpLoopConn) readHello() {
	if !c.client.rd {
		return
	}
	if c.hello == nil {
		c.hello = make([]byte, 0, 2048)
	}
	for {
		name, need, err := parseClientHello(c.hello)
		if err != nil || need == 0 {
			c.gotHello(name, err)
			return
		}
		if len(c.hello)+need > maxHelloBytes+5 {
			c.gotHello("", errBadHello)
			return
		}
		if cap(c.hello)-len(c.hello) < need {
			nb := make([]byte, len(c.hello), min(max(2*cap(c.hello), len(c.hello)+need), maxHelloBytes+5))
			copy(nb, c.hello)
			c.hello = nb
		}
		n, e := rawRead(int(c.client.fd), c.hello[len(c.hello):cap(c.hello)])
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			c.client.rd = false
			return
		case e != 0:
			c.gotHello("", e)
			return
		case n == 0:
			c.gotHello("", io.ErrUnexpectedEOF)
			return
		}
		c.hello = c.hello[:len(c.hello)+n]
	}
}

func (c *tcpLoopConn) gotHello(name string, err error) {
	var rt *tcpRoute
	reason := ""
	switch {
	case err != nil:
		reason = "bad_hello"
	case name == "":
		reason = "no_sni"
	default:
		if m := c.l.byName.Load(); m != nil {
			rt = (*m)[name]
		}
		if rt == nil {
			reason = "unknown_sni"
		}
	}
	if rt == nil {
		c.refuse(reason, name)
		return
	}
	c.rt, c.l = rt, nil
	c.dial()
}

func (c *tcpLoopConn) refuse(reason, name string) {
	fd := int(c.client.fd)
	c.lp.ls.t.refusePassthrough(c.l, func() string { return peerName(fd) }, reason, name)
	c.close(endDone)
}

// The system calls of the loop, made raw: none of them blocks (the sockets
// are non-blocking), and on loopback a write or close runs the receiver's
// side of TCP inside the call, long enough that the ordinary way would
// hand the loop's processor to another thread (see tcp_io_linux.go).

func rawRead(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), e
}

func rawWrite(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), e
}

func rawClose(fd int) {
	syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0)
}

func rawShutWR(fd int) {
	syscall.RawSyscall(syscall.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
}

func accept4(fd int) (int, error) {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR, unix.ECONNABORTED:
			continue
		}
		return -1, e
	}
}

func setNoDelay(fd int) {
	one := int32(1)
	syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, uintptr(unsafe.Pointer(&one)), 4, 0)
}

func epollCtl(epfd, op, fd int, ev *unix.EpollEvent) syscall.Errno {
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	return e
}

// epollWaitRaw polls without waiting (epoll_pwait: arm64 has no epoll_wait).
func epollWaitRaw(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// connectNB starts a connect without waiting: socket, TCP_NODELAY (as on
// accepted sockets), connect. connected: the handshake is already over.
func connectNB(ap netip.AddrPort) (fd int, connected bool, err error) {
	s, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family(ap)), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if e != 0 {
		return -1, false, os.NewSyscallError("socket", e)
	}
	fd = int(s)
	setNoDelay(fd)
	switch e := rawConnect(fd, ap); e {
	case nil:
		return fd, true, nil
	case unix.EINPROGRESS, unix.EINTR:
		return fd, false, nil
	default:
		rawClose(fd)
		return -1, false, os.NewSyscallError("connect", e)
	}
}

// connectError tells why a connect that epoll reported broken failed.
func connectError(fd int) error {
	if e := sockError(fd); e != 0 {
		return os.NewSyscallError("connect", e)
	}
	return os.NewSyscallError("connect", unix.ECONNREFUSED)
}

// peerName is a socket's peer address for a log line.
func peerName(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return ""
	}
	return sockaddrTCP(sa).String()
}
