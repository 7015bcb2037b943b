package proxy

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// The client's half-close reaches the instance through the route, and the
// answer the instance sends after it still reaches the client, then EOF.
func TestTCPRouteHalfClose(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo"}}})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1)
	e.synced()
	c, _ := dialEcho(t, e.addr("127.0.0.1:0"))
	if _, err := io.WriteString(c, "last words"); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "last words" {
		t.Fatalf("after the client's half-close: read %q, %v; want the echo, then EOF", got, err)
	}
}

func TestDialInstance(t *testing.T) {
	a := newEchoServer(t, "A", nil)
	c, err := dialInstance(a.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != a.addr {
		t.Errorf("RemoteAddr %s, want %s", c.RemoteAddr(), a.addr)
	}
	if la, ok := c.LocalAddr().(*net.TCPAddr); !ok || !la.IP.IsLoopback() || la.Port == 0 {
		t.Errorf("LocalAddr %v, want a loopback address and port", c.LocalAddr())
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if name := readName(t, c); name != "A" {
		t.Fatalf("instance %q, want A", name)
	}
	io.WriteString(c, "ping")
	closeWrite(c)
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("after CloseWrite: read %q, %v; want ping, then EOF", got, err)
	}

	if _, err := dialInstance(deadPort(t), 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dialing a closed port: %v, want connection refused", err)
	}
	if _, err := dialInstance("localhost:1", 5*time.Second); err == nil {
		t.Errorf("dialing a host name's closed port: no error")
	}
}

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
