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
