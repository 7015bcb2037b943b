//go:build !linux

package proxy

import (
	"net"
	"time"
)

// dialInstance connects a TCP route to an instance.
func dialInstance(addr string, timeout time.Duration) (net.Conn, error) {
	return dialInstanceNet(addr, timeout)
}
