//go:build !linux

package dns

import "net"

// udpSockets: one UDP socket per address where SO_REUSEPORT is not used.
func udpSockets(int) int { return 1 }

func udpListenConfig() *net.ListenConfig { return &net.ListenConfig{} }

// blockingReads: elsewhere readers wait in Go's network poller.
func blockingReads(*net.UDPConn) error { return nil }

func wakeReaders(*net.UDPConn) {}

const readFlags = 0
