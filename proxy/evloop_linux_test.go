//go:build linux

package proxy

import (
	"testing"
	"unsafe"
)

// TestParkedConnSize keeps what a parked connection holds in Go's heap to
// one 96-byte object: the event loop's memory per idle connection is
// mostly this (issue 22 compares it with nginx's).
func TestParkedConnSize(t *testing.T) {
	if n := unsafe.Sizeof(loopConn{}); n > 96 {
		t.Errorf("loopConn is %d bytes, want at most 96", n)
	}
}
