//go:build linux

package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sockIO reads and writes one side of a TCP route's connection. On the
// sockets the route opens or accepts itself it makes the read, write and
// shutdown calls raw (syscall.RawSyscall through the connection's
// RawConn, which still waits in Go's netpoller and keeps the deadlines):
// on loopback a write or shutdown runs the receiver's side of TCP inside
// the call, often longer than the 20 us after which the runtime hands a P
// in a system call to another thread, and a short connection made that
// handoff several times, with the wake-ups and context switches of each.
// These calls never block (the sockets are non-blocking), so keeping the
// P costs nothing. Any other net.Conn is used as it is.
type sockIO struct {
	c  net.Conn
	rc syscall.RawConn // nil: through c
	// A read and a write may run at once (the two directions' goroutines):
	// each has its own fields.
	rbuf, wbuf []byte
	rn, wn     int
	rerr, werr error
	rd, wr     func(uintptr) bool
}

func (s *sockIO) init(c net.Conn) {
	s.c = c
	var rc syscall.RawConn
	switch c := c.(type) {
	case *net.TCPConn:
		rc, _ = c.SyscallConn()
	case *fileConn:
		rc = c.rc
	}
	if rc == nil {
		return
	}
	s.rc = rc
	s.rd = s.readFD
	s.wr = s.writeFD
}

func (s *sockIO) Read(b []byte) (int, error) {
	if s.rc == nil {
		return s.c.Read(b)
	}
	s.rbuf, s.rn, s.rerr = b, 0, nil
	if err := s.rc.Read(s.rd); err != nil {
		return 0, err
	}
	return s.rn, s.rerr
}

func (s *sockIO) readFD(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(s.rbuf))), uintptr(len(s.rbuf)))
		switch {
		case e == syscall.EINTR:
			continue
		case e == syscall.EAGAIN:
			return false
		case e != 0:
			s.rerr = e
		case n == 0:
			s.rerr = io.EOF
		default:
			s.rn = int(n)
		}
		return true
	}
}

func (s *sockIO) Write(b []byte) (int, error) {
	if s.rc == nil {
		return s.c.Write(b)
	}
	s.wbuf, s.wn, s.werr = b, 0, nil
	if err := s.rc.Write(s.wr); err != nil {
		return s.wn, err
	}
	return s.wn, s.werr
}

func (s *sockIO) writeFD(fd uintptr) bool {
	for s.wn < len(s.wbuf) {
		p := s.wbuf[s.wn:]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		switch e {
		case 0:
			s.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werr = e
			return true
		}
	}
	return true
}

// closeWrite passes a half-close on: the peer reads EOF.
func (s *sockIO) closeWrite() {
	if s.rc == nil {
		closeWrite(s.c)
		return
	}
	rawShutdown(s.rc)
}

// close ends the connection. The FIN (or the reset, with bytes unread)
// goes out in a raw shutdown first, for the same reason as the writes; the
// close that follows only frees the descriptor.
func (s *sockIO) close() {
	if s.rc != nil {
		rawShutdown(s.rc)
	}
	s.c.Close()
}

func rawShutdown(rc syscall.RawConn) error {
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		if _, _, e := syscall.RawSyscall(syscall.SYS_SHUTDOWN, fd, unix.SHUT_WR, 0); e != 0 {
			err = e
		}
	}); cerr != nil {
		return cerr
	}
	return err
}
