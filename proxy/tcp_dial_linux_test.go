//go:build linux

package proxy

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pier-dev/pier/lb"
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

// blackHole is an address whose connects get no answer: a listener with
// backlog 0 whose one-connection queue the test filled.
func blackHole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	for range 4 {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("four connections to a listener with backlog 0 all went through")
	return ""
}

// A connect that times out moves on to the next instance (nothing was
// sent to the first) and counts as a failure of the silent one.
func TestTCPRouteConnectTimeout(t *testing.T) {
	e := newTCPEnvLB(t, func(c *lb.Config) { c.ConnectTimeout = 300 * time.Millisecond },
		func(c *Config) { c.MaxFails = 1; c.FailTimeout = time.Minute },
		TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo"}}})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1)
	e.register("hole", "echo", blackHole(t), 1)
	e.synced()
	// Connections are kept open: least-connections then picks the silent
	// instance for the second at the latest.
	for i := range 3 {
		c, name := dialEcho(t, e.addr("127.0.0.1:0"))
		if name != "A" {
			t.Fatalf("connection %d answered by %q", i, name)
		}
		roundTrip(t, c, "after a timeout\n")
	}
	if n := testutil.ToFloat64(e.tcp.met.failuresVec.WithLabelValues("127.0.0.1:0", "echo")); n != 1 {
		t.Errorf("tcp_connect_failures_total = %v, want 1 (then the instance is out for fail_timeout)", n)
	}
}
