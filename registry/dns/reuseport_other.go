//go:build !linux

package dns

import "net"

// udpSockets: one UDP socket per address where SO_REUSEPORT is not used.
func udpSockets(int) int { return 1 }

func udpListenConfig() *net.ListenConfig { return &net.ListenConfig{} }
