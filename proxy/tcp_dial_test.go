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
