package main

// The io_uring variant (-uring): the same proxy as the epoll loop, but every
// socket call of a loop goes through one ring, so that one io_uring_enter
// submits the sends and receives of many connections at once and collects
// what completed. On a machine where entering the kernel is dear (a
// paravirtualized VM), this is the one way left to do fewer system calls per
// request than nginx's four.

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	opAccept = iota + 1
	opRecv
	opSend // a request to an instance, or a response to a client

	ringEntries = 4096

	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13
	enterGetEvents    = 1
	acceptMultishot   = 1
	cqeFMore          = 2

	iouringOpAccept = 13
	iouringOpSend   = 26
	iouringOpRecv   = 27
)

type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type uringParams struct {
	SqEntries, CqEntries, Flags, SqThreadCPU, SqThreadIdle, Features, WqFd uint32
	Resv                                                                   [3]uint32
	SqOff                                                                  sqringOffsets
	CqOff                                                                  cqringOffsets
}

type sqe struct {
	Opcode      uint8
	Flags       uint8
	Ioprio      uint16
	Fd          int32
	Off         uint64
	Addr        uint64
	Len         uint32
	OpFlags     uint32
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	FileIndex   int32
	Addr3       uint64
	Pad         uint64
}

type cqe struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

type ring struct {
	fd                 int
	sqHead, sqTail     *uint32
	sqMask             uint32
	sqes               []sqe
	cqHead, cqTail     *uint32
	cqMask             uint32
	cqes               []cqe
	pending            uint32 // SQEs written but not yet submitted
	localTail          uint32
	sqMem, cqMem, sMem []byte
}

func newRing() (*ring, error) {
	var p uringParams
	p.Flags = setupSingleIssuer | setupDeferTaskrun
	fd, _, e := syscall.RawSyscall(unix.SYS_IO_URING_SETUP, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	if e != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", e)
	}
	r := &ring{fd: int(fd)}
	sqSize := int(p.SqOff.Array + p.SqEntries*4)
	cqSize := int(p.CqOff.Cqes + p.CqEntries*uint32(unsafe.Sizeof(cqe{})))
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, 0, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, err
	}
	if r.cqMem, err = unix.Mmap(r.fd, 0x8000000, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, err
	}
	if r.sMem, err = unix.Mmap(r.fd, 0x10000000, int(p.SqEntries)*int(unsafe.Sizeof(sqe{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, err
	}
	at := func(m []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&m[off])) }
	r.sqHead, r.sqTail = at(r.sqMem, p.SqOff.Head), at(r.sqMem, p.SqOff.Tail)
	r.sqMask = *at(r.sqMem, p.SqOff.RingMask)
	r.cqHead, r.cqTail = at(r.cqMem, p.CqOff.Head), at(r.cqMem, p.CqOff.Tail)
	r.cqMask = *at(r.cqMem, p.CqOff.RingMask)
	r.sqes = unsafe.Slice((*sqe)(unsafe.Pointer(&r.sMem[0])), p.SqEntries)
	r.cqes = unsafe.Slice((*cqe)(unsafe.Pointer(&r.cqMem[p.CqOff.Cqes])), p.CqEntries)
	array := unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqMem[p.SqOff.Array])), p.SqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	r.localTail = *r.sqTail
	return r, nil
}

// get returns the next free SQE, submitting what is queued when the ring is
// full.
func (r *ring) get() *sqe {
	for r.localTail-atomic.LoadUint32(r.sqHead) >= uint32(len(r.sqes)) {
		r.enter(0, false)
	}
	s := &r.sqes[r.localTail&r.sqMask]
	*s = sqe{}
	r.localTail++
	r.pending++
	atomic.StoreUint32(r.sqTail, r.localTail)
	return s
}

// enter submits what is queued and runs completed work. Only a wait goes
// through the runtime's syscall path, so that the GC and the scheduler carry
// on while the thread sleeps.
func (r *ring) enter(minComplete uintptr, wait bool) {
	call := syscall.RawSyscall6
	if wait {
		call = syscall.Syscall6
	}
	n, _, e := call(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.pending), minComplete, enterGetEvents, 0, 0)
	if e != 0 && e != syscall.EINTR && e != syscall.EAGAIN && e != syscall.EBUSY {
		fail(fmt.Errorf("io_uring_enter: %w", e))
	}
	if e == 0 {
		r.pending -= uint32(n)
	}
}

type uconn struct {
	id, gen  uint32
	fd       int
	upstream bool
	backend  int
	peer     *uconn
	buf      []byte
	n        int
	out      []byte
	remoteIP []byte
	reading  bool
}

type uloop struct {
	r       *ring
	lfd     int
	conns   []*uconn
	free    []uint32
	idle    [][]*uconn
	busy    []int
	targets []unix.SockaddrInet4
}

func runUring(addr unix.SockaddrInet4, targets []unix.SockaddrInet4) error {
	n := runtime.GOMAXPROCS(0)
	for range n {
		lfd, err := listener(addr)
		if err != nil {
			return err
		}
		l := &uloop{lfd: lfd, idle: make([][]*uconn, len(targets)), busy: make([]int, len(targets)), targets: targets}
		errc := make(chan error, 1)
		go l.run(errc)
		if err := <-errc; err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "ceiling: %d io_uring loops\n", n)
	select {}
}

func listener(addr unix.SockaddrInet4) (int, error) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return -1, err
	}
	if err := unix.Bind(lfd, &addr); err != nil {
		return -1, err
	}
	return lfd, unix.Listen(lfd, 4096)
}

func userData(c *uconn, op int) uint64 {
	if c == nil {
		return uint64(op)
	}
	return uint64(c.id)<<32 | uint64(c.gen&0xffffff)<<8 | uint64(op)
}

func (l *uloop) run(errc chan<- error) {
	// SINGLE_ISSUER ties the ring to the thread that made it.
	runtime.LockOSThread()
	r, err := newRing()
	errc <- err
	if err != nil {
		return
	}
	l.r = r
	s := r.get()
	s.Opcode, s.Fd, s.Ioprio = iouringOpAccept, int32(l.lfd), acceptMultishot
	s.UserData = userData(nil, opAccept)
	for {
		r.enter(0, false)
		if atomic.LoadUint32(r.cqTail) == *r.cqHead && r.pending == 0 {
			r.enter(1, true)
		}
		head := *r.cqHead
		for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
			c := r.cqes[head&r.cqMask]
			l.complete(c)
		}
		atomic.StoreUint32(r.cqHead, head)
	}
}

func (l *uloop) complete(e cqe) {
	op := int(e.UserData & 0xff)
	if op == opAccept {
		if e.Flags&cqeFMore == 0 {
			s := l.r.get()
			s.Opcode, s.Fd, s.Ioprio = iouringOpAccept, int32(l.lfd), acceptMultishot
			s.UserData = userData(nil, opAccept)
		}
		if e.Res >= 0 {
			l.accepted(int(e.Res))
		}
		return
	}
	id, gen := uint32(e.UserData>>32), uint32(e.UserData>>8)&0xffffff
	c := l.conns[id]
	if c.gen&0xffffff != gen || c.fd < 0 {
		return // a completion for a connection since closed
	}
	switch op {
	case opRecv:
		c.reading = false
		if e.Res <= 0 {
			l.close(c)
			return
		}
		c.n += int(e.Res)
		if c.upstream {
			l.upstreamData(c)
		} else {
			l.clientData(c)
		}
	case opSend:
		if e.Res < 0 {
			l.close(c)
			return
		}
		if c.upstream && c.peer == nil && c.n == 0 {
			// the response went out from this connection's buffer: it may
			// take the next request now
			l.idle[c.backend] = append(l.idle[c.backend], c)
		}
	}
}

func (l *uloop) newConn(fd int, upstream bool, size int) *uconn {
	var c *uconn
	if k := len(l.free); k > 0 {
		c = l.conns[l.free[k-1]]
		l.free = l.free[:k-1]
	} else {
		c = &uconn{id: uint32(len(l.conns))}
		l.conns = append(l.conns, c)
	}
	c.gen++
	c.fd, c.upstream, c.peer, c.n, c.reading = fd, upstream, nil, 0, false
	if len(c.buf) != size {
		c.buf = make([]byte, size)
	}
	return c
}

func (l *uloop) accepted(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	c := l.newConn(fd, false, clientBuf)
	c.remoteIP = c.remoteIP[:0]
	if sa, err := unix.Getpeername(fd); err == nil {
		if s4, ok := sa.(*unix.SockaddrInet4); ok {
			c.remoteIP = netip.AddrFrom4(s4.Addr).AppendTo(c.remoteIP)
		}
	}
	l.recv(c)
}

func (l *uloop) recv(c *uconn) {
	if c.n == len(c.buf) {
		l.close(c)
		return
	}
	s := l.r.get()
	s.Opcode, s.Fd = iouringOpRecv, int32(c.fd)
	s.Addr, s.Len = uint64(uintptr(unsafe.Pointer(&c.buf[c.n]))), uint32(len(c.buf)-c.n)
	s.UserData = userData(c, opRecv)
	c.reading = true
}

func (l *uloop) send(c *uconn, to int, b []byte) {
	s := l.r.get()
	s.Opcode, s.Fd = iouringOpSend, int32(to)
	s.Addr, s.Len = uint64(uintptr(unsafe.Pointer(&b[0]))), uint32(len(b))
	s.UserData = userData(c, opSend)
}

// close shuts the socket down before closing it, so that a receive still
// armed on it completes rather than holding the file open.
func (l *uloop) close(c *uconn) {
	if c == nil || c.fd < 0 {
		return
	}
	unix.Shutdown(c.fd, unix.SHUT_RDWR)
	unix.Close(c.fd)
	c.fd = -1
	c.gen++
	l.free = append(l.free, c.id)
	if c.upstream { // its struct is reused: it must not stay in the pool
		idle := l.idle[c.backend]
		for i, u := range idle {
			if u == c {
				l.idle[c.backend] = append(idle[:i], idle[i+1:]...)
				break
			}
		}
	}
	if p := c.peer; p != nil {
		up := c
		if !c.upstream {
			up = p
		}
		l.busy[up.backend]--
		c.peer, p.peer = nil, nil
		l.close(p)
	}
}

func (l *uloop) clientData(c *uconn) {
	end := bytes.Index(c.buf[:c.n], endOfHead)
	if end < 0 {
		l.recv(c)
		return
	}
	if c.n != end+4 || !bytes.HasPrefix(c.buf, []byte("GET /api/")) {
		l.close(c)
		return
	}
	c.out = rewrite(c.out[:0], c.buf[:end+4], c.remoteIP)
	c.n = 0
	b := leastBusy(l.busy)
	var u *uconn
	for k := len(l.idle[b]); k > 0 && u == nil; k = len(l.idle[b]) {
		u = l.idle[b][k-1]
		l.idle[b] = l.idle[b][:k-1]
		if u.peer != nil {
			u = nil
		}
	}
	if u == nil {
		fd, err := dial(&l.targets[b])
		if err != nil {
			l.close(c)
			return
		}
		u = l.newConn(fd, true, upstreamBuf)
		u.backend = b
	}
	l.busy[b]++
	u.peer, c.peer = c, u
	l.send(u, u.fd, c.out)
	if !u.reading {
		l.recv(u)
	}
}

func (l *uloop) upstreamData(u *uconn) {
	if u.peer == nil {
		l.close(u) // bytes, or the end, on an idle connection
		return
	}
	end := bytes.Index(u.buf[:u.n], endOfHead)
	if end < 0 {
		l.recv(u)
		return
	}
	size, ok := contentLength(u.buf[:end+2])
	total := end + 4 + size
	if !ok || total > len(u.buf) || u.n > total {
		l.close(u)
		return
	}
	if u.n < total {
		l.recv(u)
		return
	}
	c := u.peer
	u.peer, c.peer = nil, nil
	l.busy[u.backend]--
	// The response goes out from u's buffer; u is idle again once that
	// send completes, and its next receive is armed now (the instance
	// sends nothing until it is asked).
	u.n = 0
	l.send(u, c.fd, u.buf[:total])
	l.recv(u)
	l.recv(c)
}
