//go:build linux

package proxy

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// An instance whose accept queue is full drops the SYN: the dial ends
// with a timeout after the connect timeout, not the kernel's minutes of
// retries.
func TestDialInstanceTimeout(t *testing.T) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	// Fill the queue (backlog 0 holds one connection); the next connect
	// gets no answer.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 4 {
		start := time.Now()
		c, err := dialInstance(addr, 300*time.Millisecond)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("dial to a full queue: %v, want a timeout", err)
			}
			if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
				t.Fatalf("dial to a full queue ended after %s, want about the 300ms connect timeout", d)
			}
			return
		}
		held = append(held, c)
	}
	t.Fatal("four connections to a listener with backlog 0 all went through")
}
