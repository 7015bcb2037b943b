package proxy

import (
	"net"
	"time"
)

// dialInstanceNet connects through net.Dialer, without TCP keep-alive: the
// route's idle timeout is what ends a connection whose instance went away,
// and the keep-alive options cost four setsockopt calls a connection.
func dialInstanceNet(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: -1}
	return d.Dial("tcp", addr)
}
