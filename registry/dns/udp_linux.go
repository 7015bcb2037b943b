package dns

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpSockets is how many UDP sockets share each address: one per reader,
// so that the kernel spreads clients over them (SO_REUSEPORT) and no two
// readers wait on one socket's locks.
func udpSockets(n int) int { return n }

// udpSock is a UDP socket that Go's network poller never sees. Its readers
// wait for queries inside a blocking recvmmsg, as unbound's threads do.
// Registered with the poller (as every net.UDPConn is, even one switched
// to blocking mode), each arriving datagram also woke an idle thread in
// epoll_wait for nothing: a fifth of the CPU at 90k queries/s went there.
// A blocked reader holds an OS thread, not a P: the call goes through the
// runtime's system call entry, so the scheduler and the garbage collector
// carry on without it.
type udpSock struct {
	fd    int
	v6    bool // AF_INET6; replies to IPv4 clients go to their mapped address
	local *net.UDPAddr
}

// listenUDP opens a blocking UDP socket bound to ip:port with
// SO_REUSEPORT. The TCP socket on the same port is opened first and without
// it, so another process on the port is still refused (address already in
// use) rather than sharing the traffic. An unspecified IPv6 address (what
// ":port" binds) takes IPv4 as well, as Go's net package does.
func listenUDP(ip net.IP, port int) (*udpSock, error) {
	var sa unix.Sockaddr
	u := &udpSock{fd: -1}
	if ip4 := ip.To4(); ip4 != nil {
		sa = &unix.SockaddrInet4{Port: port, Addr: [4]byte(ip4)}
	} else {
		u.v6 = true
		sa = &unix.SockaddrInet6{Port: port, Addr: [16]byte(ip.To16())}
	}
	family := unix.AF_INET
	if u.v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("listen udp %s: socket: %w", net.JoinHostPort(ip.String(), fmt.Sprint(port)), err)
	}
	u.fd = fd
	fail := func(op string, err error) (*udpSock, error) {
		unix.Close(fd)
		return nil, &net.OpError{Op: "listen", Net: "udp", Addr: &net.UDPAddr{IP: ip, Port: port}, Err: fmt.Errorf("%s: %w", op, err)}
	}
	if u.v6 && ip.IsUnspecified() {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail("setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("setsockopt SO_REUSEPORT", err)
	}
	// Absorb bursts; the kernel caps it at rmem_max.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	// A reader whose wake-up (wake) was missed still comes back to see that
	// the server is stopping. Not sooner: each return from a blocking
	// receive wakes the runtime's sysmon, which then polls every few
	// microseconds until it takes the reader's P back (about 10 ms, 50 to
	// 80 wake-ups); at 1 s, the two idle readers were most of an idle
	// agent's context switches.
	tv := unix.Timeval{Sec: 30}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("setsockopt SO_RCVTIMEO", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		u.local = &net.UDPAddr{IP: net.IP(b.Addr[:]).To16(), Port: b.Port}
	case *unix.SockaddrInet6:
		u.local = &net.UDPAddr{IP: net.IP(b.Addr[:]), Port: b.Port}
	}
	return u, nil
}

func (u *udpSock) LocalAddr() net.Addr { return u.local }

// wake ends the waits of readers blocked in recvmmsg: closing does not
// wake a blocked receive. Linux marks even an unconnected UDP socket shut
// down and wakes its waiters, whose receive then returns no message.
func (u *udpSock) wake() { unix.Shutdown(u.fd, unix.SHUT_RD) }

// Close closes the socket. Nobody may use it any more: the descriptor's
// number is free for the next file opened.
func (u *udpSock) Close() error { return unix.Close(u.fd) }

// writeTo sends one reply outside a batch (a forwarded query's answer).
func (u *udpSock) writeTo(b []byte, to netip.AddrPort) error {
	var sa unix.Sockaddr
	if u.v6 {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().Unmap().As4()}
	}
	return unix.Sendto(u.fd, b, 0, sa)
}

// udpBatch reads up to udpBatchLen queries per recvmmsg and sends the replies
// in one sendmmsg, each to the raw source address its query came from.
type udpBatch struct {
	u     *udpSock
	in    []unix.Mmsghdr
	names []unix.RawSockaddrAny
	iov   []unix.Iovec
	bufs  []byte
	out   []unix.Mmsghdr
	oiov  []unix.Iovec
	obufs [][]byte
	k     int // replies queued
}

func newUDPBatch(u *udpSock) *udpBatch {
	b := &udpBatch{
		u:     u,
		in:    make([]unix.Mmsghdr, udpBatchLen),
		names: make([]unix.RawSockaddrAny, udpBatchLen),
		iov:   make([]unix.Iovec, udpBatchLen),
		bufs:  make([]byte, udpBatchLen*maxQuery),
		out:   make([]unix.Mmsghdr, udpBatchLen),
		oiov:  make([]unix.Iovec, udpBatchLen),
		obufs: make([][]byte, udpBatchLen),
	}
	for i := range b.in {
		b.iov[i].Base = &b.bufs[i*maxQuery]
		b.iov[i].SetLen(maxQuery)
		b.in[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.in[i].Hdr.Iov = &b.iov[i]
		b.in[i].Hdr.SetIovlen(1)
		b.out[i].Hdr.Iov = &b.oiov[i]
		b.out[i].Hdr.SetIovlen(1)
		b.obufs[i] = make([]byte, 0, 4096)
	}
	return b
}

// read waits for at least one query and returns how many arrived. It
// first takes what is queued without blocking, as a raw system call that
// keeps its P; only an empty queue makes it wait, through the runtime's
// system call entry, which hands the P on. Under load most reads find
// queries waiting and skip the hand-off: sysmon taking the P from a reader
// blocked for a few microseconds, and giving it back, cost a nanosleep and
// a futex wake for every other batch.
func (b *udpBatch) read() (int, error) {
	b.reset()
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(b.u.fd), uintptr(unsafe.Pointer(&b.in[0])), uintptr(len(b.in)), unix.MSG_WAITFORONE|unix.MSG_DONTWAIT, 0, 0)
	if errno == unix.EAGAIN {
		b.reset()
		n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, uintptr(b.u.fd), uintptr(unsafe.Pointer(&b.in[0])), uintptr(len(b.in)), unix.MSG_WAITFORONE, 0, 0)
	}
	switch errno {
	case 0:
		// A socket shut down by wake "receives" messages with no source
		// (and no data), a whole batch of them at once.
		if n == 0 || b.in[0].Hdr.Namelen == 0 {
			return 0, errWoken
		}
		return int(n), nil
	case unix.EAGAIN, unix.EINTR:
		return 0, errWoken
	case unix.EBADF:
		return 0, net.ErrClosed
	}
	return 0, errno
}

// reset readies the headers for a receive: the address lengths are
// value-result.
func (b *udpBatch) reset() {
	for i := range b.in {
		b.in[i].Hdr.Namelen = unix.SizeofSockaddrAny
		b.in[i].Hdr.Flags = 0
	}
}

// query returns the i-th query read and where it came from; an address
// of another family is invalid.
func (b *udpBatch) query(i int) ([]byte, netip.AddrPort) {
	pkt := b.bufs[i*maxQuery : i*maxQuery+int(b.in[i].Len)]
	if b.in[i].Hdr.Namelen == 0 {
		return pkt, netip.AddrPort{}
	}
	switch b.names[i].Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&b.names[i]))
		return pkt, netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&b.names[i]))
		return pkt, netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), ntohs(sa.Port))
	}
	return pkt, netip.AddrPort{}
}

// ntohs reads a port as the kernel stores it, in network byte order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// buf returns an empty buffer for the next reply.
func (b *udpBatch) buf() []byte { return b.obufs[b.k][:0] }

// reply queues resp (built in buf's buffer, or a larger one) for the
// sender of query i.
func (b *udpBatch) reply(i int, resp []byte) {
	if len(resp) == 0 {
		return
	}
	if cap(resp) > cap(b.obufs[b.k]) {
		b.obufs[b.k] = resp[:0] // keep the larger buffer
	}
	h := &b.out[b.k].Hdr
	h.Name, h.Namelen = b.in[i].Hdr.Name, b.in[i].Hdr.Namelen
	b.oiov[b.k].Base = &resp[0]
	b.oiov[b.k].SetLen(len(resp))
	b.k++
}

// flush sends the queued replies. One bad destination must not hold back
// the others: it is skipped. A full send buffer is waited for, the way
// read waits.
func (b *udpBatch) flush(log *slog.Logger) {
	for sent := 0; sent < b.k; {
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(b.u.fd), uintptr(unsafe.Pointer(&b.out[sent])), uintptr(b.k-sent), unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EAGAIN {
			n, _, errno = unix.Syscall6(unix.SYS_SENDMMSG, uintptr(b.u.fd), uintptr(unsafe.Pointer(&b.out[sent])), uintptr(b.k-sent), 0, 0, 0)
		}
		switch errno {
		case 0:
			sent += max(int(n), 1)
		case unix.EINTR:
		default:
			log.Debug("udp write", "err", errno)
			sent++
		}
	}
	b.k = 0
}
