//go:build linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// loopListener is a TCP route's listening socket on the event-loop
// engine. It is opened here rather than by net.Listen because a socket
// net opens is registered with Go's netpoller for good: every connection
// arriving would then wake the runtime's poller too (for nothing: no
// goroutine accepts), on top of the loop that accepts it. It is a
// net.Listener for Addr and Close only; the loops accept from fd.
type loopListener struct {
	fd    int
	addr  *net.TCPAddr
	loops *tcpLoops

	once sync.Once
}

// listenLoop opens addr (host:port or :port, as checkListen allows) the
// way net.Listen does: SO_REUSEADDR, a dual-stack socket for an empty
// host (IPv4 alone where the machine has no IPv6), the kernel's largest
// backlog.
func listenLoop(addr string, loops *tcpLoops) (*loopListener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	pn, err := strconv.Atoi(port)
	if err != nil || pn < 0 || pn > 65535 {
		return nil, errors.New("bad port")
	}
	var ap netip.AddrPort
	dual := host == ""
	if dual {
		ap = netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(pn))
	} else {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return nil, err
		}
		ap = netip.AddrPortFrom(a.Unmap(), uint16(pn))
	}
	fd, err := listenSocket(ap, dual)
	if err != nil && dual {
		// No IPv6 here: listen on IPv4's any address.
		fd, err = listenSocket(netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(pn)), false)
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	l := &loopListener{fd: fd, loops: loops}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("getsockname", err)
	}
	l.addr = sockaddrTCP(sa)
	return l, nil
}

func listenSocket(ap netip.AddrPort, dual bool) (int, error) {
	fd, err := unix.Socket(family(ap), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	fail := func(call string, err error) (int, error) {
		unix.Close(fd)
		return -1, os.NewSyscallError(call, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("setsockopt", err)
	}
	// Accepted sockets inherit TCP_NODELAY from the listener (Linux copies
	// the listener's TCP state into each), which saves a system call a
	// connection.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return fail("setsockopt", err)
	}
	var sa unix.Sockaddr
	if a := ap.Addr(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		v6only := 1
		if dual {
			v6only = 0
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return fail("setsockopt", err)
		}
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16(), ZoneId: zoneID(a.Zone())}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	// The kernel caps the backlog at net.core.somaxconn.
	if err := unix.Listen(fd, 65535); err != nil {
		return fail("listen", err)
	}
	return fd, nil
}

func sockaddrTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	}
	return &net.TCPAddr{}
}

// Accept is never called: the loops accept.
func (l *loopListener) Accept() (net.Conn, error) { return nil, net.ErrClosed }

func (l *loopListener) Addr() net.Addr { return l.addr }

// Close takes the socket out of every loop's epoll set, waiting until no
// loop can be accepting on it, and then closes it: closing first could let
// a loop accept on a descriptor number already reused by another socket.
func (l *loopListener) Close() error {
	l.once.Do(func() {
		l.loops.dropListener(l.fd)
		unix.Close(l.fd)
	})
	return nil
}
