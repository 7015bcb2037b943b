//go:build linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dialInstance connects a TCP route to an instance. For an address of IP
// and port it opens the socket itself rather than through net.Dialer,
// which for a short connection costs as much again as the connect: the
// keep-alive options (four setsockopt calls; the idle timeout is what ends
// a connection whose instance went away, as for accepted ones), getsockname
// and getpeername, a goroutine watching the dial's context, and its
// allocations. What is left is socket, TCP_NODELAY (Nagle on the proxy's
// side would hold the small writes of a chatty protocol), connect, the
// netpoller's registration and one getsockopt to see the connect through.
// A host name goes through net.Dialer.
func dialInstance(addr string, timeout time.Duration) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return dialInstanceNet(addr, timeout)
	}
	fd, err := unix.Socket(family(ap), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("setsockopt", err)
	}
	cerr := rawConnect(fd, ap)
	if cerr == unix.EINTR {
		// An interrupted connect goes on in the background, as EINPROGRESS.
		cerr = unix.EINPROGRESS
	}
	if cerr != nil && cerr != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, os.NewSyscallError("connect", cerr)
	}
	// A non-blocking descriptor becomes an *os.File that Go's netpoller
	// waits on: reads, writes, deadlines and Close as a net.Conn's.
	f := os.NewFile(uintptr(fd), "tcp")
	c := &fileConn{f: f, raddr: net.TCPAddrFromAddrPort(ap)}
	if c.rc, err = f.SyscallConn(); err != nil {
		f.Close()
		return nil, err
	}
	if cerr == nil {
		return c, nil
	}
	// On loopback and most LANs the handshake is over by now; otherwise
	// wait for the socket to turn writable, within the connect timeout.
	var serr error
	done := false
	check := func(fd uintptr) bool {
		done, serr = connectDone(int(fd))
		return done
	}
	if err := c.rc.Control(func(fd uintptr) { check(fd) }); err != nil {
		f.Close()
		return nil, err
	}
	if !done {
		f.SetWriteDeadline(time.Now().Add(timeout))
		err := c.rc.Write(check)
		f.SetWriteDeadline(time.Time{})
		if err != nil {
			f.Close()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: c.raddr, Err: os.ErrDeadlineExceeded}
			}
			return nil, err
		}
	}
	if serr != nil {
		f.Close()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: c.raddr, Err: os.NewSyscallError("connect", serr)}
	}
	return c, nil
}

// connectDone tells whether a non-blocking connect on fd has ended, and
// how. The first byte of TCP_INFO is the socket's state: SYN_SENT while
// the handshake goes on, CLOSE when it failed (SO_ERROR says why), any
// other once connected (CLOSE_WAIT if the instance already closed).
//
// Both getsockopt calls are raw, as the connect is: a system call made the
// ordinary way wakes the runtime's sysmon thread if the process had gone
// idle before it (the event loop's usual state between connections), and
// sysmon, woken so, polls every 20 us for the next millisecond: under a
// stream of short connections that was a third of pier's context switches.
func connectDone(fd int) (bool, error) {
	var st [1]byte
	if e := rawGetsockopt(fd, unix.IPPROTO_TCP, unix.TCP_INFO, st[:]); e != 0 {
		return true, os.NewSyscallError("getsockopt", e)
	}
	switch st[0] {
	case unix.BPF_TCP_SYN_SENT:
		return false, nil
	case unix.BPF_TCP_CLOSE:
		if e := sockError(fd); e != 0 {
			return true, e
		}
		return true, unix.ECONNREFUSED
	}
	return true, nil
}

// sockError is the socket's pending error (SO_ERROR), or the getsockopt's.
func sockError(fd int) syscall.Errno {
	var v [4]byte
	if e := rawGetsockopt(fd, unix.SOL_SOCKET, unix.SO_ERROR, v[:]); e != 0 {
		return e
	}
	return syscall.Errno(*(*int32)(unsafe.Pointer(&v[0])))
}

// rawGetsockopt reads an option into b; the kernel writes at most len(b)
// bytes of it.
func rawGetsockopt(fd, level, opt int, b []byte) syscall.Errno {
	n := uint32(len(b))
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&n)), 0)
	return e
}

func family(ap netip.AddrPort) int {
	if ap.Addr().Is4() || ap.Addr().Is4In6() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// rawConnect starts a non-blocking connect without telling the scheduler:
// on loopback the kernel runs the whole handshake inside the call, tens of
// microseconds, long enough for the runtime to hand the goroutine's P to
// another thread (a wake-up and a context switch) if the call were made
// the ordinary way; and it never blocks.
func rawConnect(fd int, ap netip.AddrPort) error {
	var p unsafe.Pointer
	var n uintptr
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	port := [2]byte{byte(ap.Port() >> 8), byte(ap.Port())}
	if a := ap.Addr().Unmap(); a.Is4() {
		sa4.Family = unix.AF_INET
		sa4.Addr = a.As4()
		*(*[2]byte)(unsafe.Pointer(&sa4.Port)) = port
		p, n = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)
	} else {
		sa6.Family = unix.AF_INET6
		sa6.Addr = a.As16()
		sa6.Scope_id = zoneID(a.Zone())
		*(*[2]byte)(unsafe.Pointer(&sa6.Port)) = port
		p, n = unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)
	}
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(p), n)
	if e != 0 {
		return e
	}
	return nil
}

func zoneID(zone string) uint32 {
	if zone == "" {
		return 0
	}
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index)
	}
	return 0
}

// fileConn is a connection dialInstance made: the net.Conn of an
// *os.File, with the half-close of a *net.TCPConn.
type fileConn struct {
	f     *os.File
	rc    syscall.RawConn
	raddr *net.TCPAddr
}

func (c *fileConn) Read(b []byte) (int, error)  { return c.f.Read(b) }
func (c *fileConn) Write(b []byte) (int, error) { return c.f.Write(b) }
func (c *fileConn) Close() error                { return c.f.Close() }
func (c *fileConn) RemoteAddr() net.Addr        { return c.raddr }

// LocalAddr asks the kernel, which nothing on a TCP route's path needs.
func (c *fileConn) LocalAddr() net.Addr {
	var sa unix.Sockaddr
	c.rc.Control(func(fd uintptr) { sa, _ = unix.Getsockname(int(fd)) })
	return sockaddrTCP(sa)
}

func (c *fileConn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *fileConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *fileConn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// CloseWrite shuts the sending side: the instance reads EOF.
func (c *fileConn) CloseWrite() error {
	return rawShutdown(c.rc)
}
