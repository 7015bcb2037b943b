// Command ceiling is not pier: it is the least work a Go program can do to
// proxy deploy/bench/proxy.sh's request, to measure how fast a Go proxy can
// be on the machine at hand. One epoll loop per core on a locked thread,
// SO_REUSEPORT listeners, raw read/write system calls, no goroutine per
// connection, a keep-alive pool per loop and backend, least-busy choice.
//
// It proxies GET requests without a body to responses framed by
// Content-Length that fit in 16 KiB, strips /api, and appends
// X-Forwarded-For and X-Real-IP; anything else closes the connection. It
// checks nothing, times nothing out and does not retry: a front door cannot
// do less. `CEILING=1 deploy/bench/proxy.sh` runs it beside pier, nginx and
// haproxy.
//
//	ceiling -addr 127.0.0.1:18089 -backends 127.0.0.1:18081,127.0.0.1:18082
package main

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	clientBuf   = 8 << 10
	upstreamBuf = 16 << 10
)

type conn struct {
	fd       int
	upstream bool
	backend  int
	peer     *conn // the other side while a request is in flight
	buf      []byte
	n        int
	remoteIP []byte
}

type loop struct {
	ep      int
	lfd     int
	conns   map[int]*conn
	idle    [][]*conn // keep-alive connections per backend
	busy    []int     // requests in flight per backend
	out     []byte
	targets []unix.SockaddrInet4
}

func main() {
	addr := flag.String("addr", "127.0.0.1:18089", "address to listen on (IPv4)")
	backends := flag.String("backends", "127.0.0.1:18081,127.0.0.1:18082", "backends, comma-separated")
	uring := flag.Bool("uring", false, "one io_uring per loop instead of epoll")
	flag.Parse()
	ln, err := sockaddr(*addr)
	if err != nil {
		fail(err)
	}
	var targets []unix.SockaddrInet4
	for _, b := range strings.Split(*backends, ",") {
		sa, err := sockaddr(b)
		if err != nil {
			fail(err)
		}
		targets = append(targets, sa)
	}
	if *uring {
		fail(runUring(ln, targets))
	}
	n := runtime.GOMAXPROCS(0)
	for range n {
		l, err := newLoop(ln, targets)
		if err != nil {
			fail(err)
		}
		go l.run()
	}
	fmt.Fprintf(os.Stderr, "ceiling: %d loops on %s\n", n, *addr)
	select {}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "ceiling:", err)
	os.Exit(1)
}

func sockaddr(s string) (unix.SockaddrInet4, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !ap.Addr().Is4() {
		return unix.SockaddrInet4{}, fmt.Errorf("%q: want ipv4:port", s)
	}
	return unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
}

func newLoop(addr unix.SockaddrInet4, targets []unix.SockaddrInet4) (*loop, error) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return nil, err
	}
	if err := unix.Bind(lfd, &addr); err != nil {
		return nil, err
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		return nil, err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return nil, err
	}
	return &loop{ep: ep, lfd: lfd, conns: map[int]*conn{}, idle: make([][]*conn, len(targets)),
		busy: make([]int, len(targets)), targets: targets}, nil
}

// The raw calls skip the runtime's syscall bookkeeping: every socket is
// non-blocking, so none of them can block.
func rawRead(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), e
}

func rawWrite(fd int, b []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return int(n), e
}

func (l *loop) run() {
	runtime.LockOSThread()
	evs := make([]unix.EpollEvent, 256)
	p := uintptr(unsafe.Pointer(unsafe.SliceData(evs)))
	for {
		// Take what is ready without blocking; only an empty poll waits,
		// through the runtime so that the GC and scheduler carry on.
		n, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.ep), p, uintptr(len(evs)), 0, 0, 0)
		if e == 0 && n == 0 {
			n, _, e = syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.ep), p, uintptr(len(evs)), ^uintptr(0), 0, 0)
		}
		if e != 0 {
			if e == syscall.EINTR {
				continue
			}
			fail(e)
		}
		for i := range int(n) {
			fd := int(evs[i].Fd)
			if fd == l.lfd {
				l.accept()
				continue
			}
			switch c := l.conns[fd]; {
			case c == nil:
			case c.upstream:
				l.upstreamRead(c)
			default:
				l.clientRead(c)
			}
		}
	}
}

func (l *loop) add(c *conn) {
	l.conns[c.fd] = c
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.close(c)
	}
}

func (l *loop) close(c *conn) {
	if c == nil || c.fd < 0 {
		return
	}
	delete(l.conns, c.fd)
	unix.Close(c.fd)
	c.fd = -1
	if p := c.peer; p != nil { // a request in flight ends with either side
		up := c
		if !c.upstream {
			up = p
		}
		l.busy[up.backend]--
		c.peer, p.peer = nil, nil
		l.close(p)
	}
}

func (l *loop) accept() {
	for {
		fd, sa, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &conn{fd: fd, buf: make([]byte, clientBuf)}
		if s4, ok := sa.(*unix.SockaddrInet4); ok {
			c.remoteIP = netip.AddrFrom4(s4.Addr).AppendTo(nil)
		}
		l.add(c)
		if c.fd >= 0 {
			l.clientRead(c)
		}
	}
}

var (
	endOfHead  = []byte("\r\n\r\n")
	crlf       = []byte("\r\n")
	lengthName = []byte("content-length:")
)

func (l *loop) clientRead(c *conn) {
	if c.peer != nil {
		return // no pipelining: the next request is read once this one is answered
	}
	for l.read(c) {
		end := bytes.Index(c.buf[:c.n], endOfHead)
		if end < 0 {
			continue
		}
		if c.n != end+4 || !bytes.HasPrefix(c.buf, []byte("GET /api/")) {
			l.close(c) // a body, pipelining, or a request it does not proxy
			return
		}
		l.forward(c, c.buf[:end+4])
		c.n = 0
		return
	}
}

// read appends what c's socket holds to c.buf. It is false when there is
// nothing more for now, and closes c on an error or the end of the stream,
// and once c.buf is full (a read into no room returns 0).
func (l *loop) read(c *conn) bool {
	m, e := rawRead(c.fd, c.buf[c.n:])
	if e == syscall.EAGAIN {
		return false
	}
	if e != 0 || m == 0 {
		l.close(c)
		return false
	}
	c.n += m
	return true
}

// rewrite appends "GET /api/x HTTP/1.1" as "GET /x HTTP/1.1" with the
// client's headers but Connection, and X-Forwarded-For and X-Real-IP.
func rewrite(o, req, remoteIP []byte) []byte {
	line := bytes.Index(req, crlf)
	o = append(o, "GET "...)
	o = append(o, req[len("GET /api"):line+2]...)
	for h := req[line+2 : len(req)-2]; len(h) > 0; {
		e := bytes.Index(h, crlf) + 2
		if !(e > 11 && bytes.EqualFold(h[:11], []byte("connection:"))) {
			o = append(o, h[:e]...)
		}
		h = h[e:]
	}
	o = append(o, "X-Forwarded-For: "...)
	o = append(o, remoteIP...)
	o = append(o, "\r\nX-Real-IP: "...)
	o = append(o, remoteIP...)
	return append(o, "\r\n\r\n"...)
}

// forward sends the rewritten request to the least busy instance.
func (l *loop) forward(c *conn, req []byte) {
	o := rewrite(l.out[:0], req, c.remoteIP)
	l.out = o

	b := leastBusy(l.busy)
	var u *conn
	if k := len(l.idle[b]); k > 0 {
		u = l.idle[b][k-1]
		l.idle[b] = l.idle[b][:k-1]
	} else {
		// A blocking connect: on loopback it is answered at once, and a
		// new connection is rare once the pool is warm.
		fd, err := dial(&l.targets[b])
		if err != nil {
			l.close(c)
			return
		}
		unix.SetNonblock(fd, true)
		u = &conn{fd: fd, upstream: true, backend: b, buf: make([]byte, upstreamBuf)}
		l.add(u)
		if u.fd < 0 {
			l.close(c)
			return
		}
	}
	l.busy[b]++
	u.peer, c.peer = c, u
	if m, e := rawWrite(u.fd, o); e != 0 || m != len(o) {
		l.close(u)
	}
}

func (l *loop) upstreamRead(u *conn) {
	for l.read(u) { // an error closes u and its client, whose answer is lost
		if u.peer == nil {
			l.close(u) // bytes, or the end, on an idle connection
			return
		}
		end := bytes.Index(u.buf[:u.n], endOfHead)
		if end < 0 {
			continue
		}
		size, ok := contentLength(u.buf[:end+2])
		total := end + 4 + size
		if !ok || total > len(u.buf) {
			l.close(u)
			return
		}
		if u.n < total {
			continue
		}
		c := u.peer
		if m, e := rawWrite(c.fd, u.buf[:total]); e != 0 || m != total || u.n != total {
			l.close(u)
			return
		}
		u.n = 0
		u.peer, c.peer = nil, nil
		l.busy[u.backend]--
		l.idle[u.backend] = append(l.idle[u.backend], u)
		l.clientRead(c)
		return
	}
}

func contentLength(head []byte) (int, bool) {
	for h := head[bytes.Index(head, crlf)+2:]; len(h) > 0; {
		e := bytes.Index(h, crlf)
		if e > len(lengthName) && bytes.EqualFold(h[:len(lengthName)], lengthName) {
			n, err := strconv.Atoi(string(bytes.TrimSpace(h[len(lengthName):e])))
			return n, err == nil && n >= 0
		}
		h = h[e+2:]
	}
	return 0, false
}

// dial connects to an instance with a blocking connect, answered at once
// on loopback.
func dial(sa *unix.SockaddrInet4) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return -1, err
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	return fd, nil
}

// leastBusy is the instance with the fewest requests in flight, the first
// of equals.
func leastBusy(busy []int) int {
	b := 0
	for i := range busy {
		if busy[i] < busy[b] {
			b = i
		}
	}
	return b
}
