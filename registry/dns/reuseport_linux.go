package dns

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// udpSockets is how many UDP sockets share each address: one per reader,
// so that the kernel spreads clients over them (SO_REUSEPORT) and no two
// readers wait on one socket's locks.
func udpSockets(n int) int { return n }

// udpListenConfig sets SO_REUSEPORT. The TCP socket on the same port is
// opened first and without it, so another process on the port is still
// refused (address already in use) rather than sharing the traffic.
func udpListenConfig() *net.ListenConfig {
	return &net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
}

// blockingReads puts a UDP socket in blocking mode, so that its reader
// waits for queries inside recvmmsg, as unbound's threads do, instead of
// parking in Go's network poller: under load the poller's round trip (park,
// epoll, wake another thread) cost as many system calls again as the
// queries themselves. The reader's thread stays in the kernel while it
// waits; Go hands its P to other goroutines meanwhile. A one-second receive
// timeout sends a reader back through the poller now and then, so that a
// socket whose wake-up (wakeReaders) was missed still ends.
func blockingReads(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		tv := unix.Timeval{Sec: 1}
		if serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); serr != nil {
			return
		}
		serr = unix.SetNonblock(int(fd), false)
	}); err != nil {
		return err
	}
	return serr
}

// wakeReaders ends the waits of readers blocked in recvmmsg on c: Close
// alone would wait for them (Go closes a descriptor once nobody is in a
// system call on it), and closing does not wake a blocked receive. Linux
// marks even an unconnected UDP socket shut down and wakes its waiters,
// whose receive then returns no message.
func wakeReaders(c *net.UDPConn) {
	if rc, err := c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RD) })
	}
}

// readFlags makes a blocking recvmmsg return once it has one query rather
// than wait for a whole batch.
const readFlags = unix.MSG_WAITFORONE
