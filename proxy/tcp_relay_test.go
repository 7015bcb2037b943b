package proxy

import (
	"bufio"
	"crypto/sha256"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// sourceServer is an instance that writes size bytes of a pattern on every
// connection, counting what its writes got through, then closes.
type sourceServer struct {
	addr    string
	written atomic.Int64
}

func newSourceServer(t *testing.T, size int64) *sourceServer {
	t.Helper()
	ln := listen(t)
	s := &sourceServer{addr: ln.Addr().String()}
	serveEach(t, ln, func(c net.Conn) {
		defer c.Close()
		buf := pattern(64 << 10)
		for left := size; left > 0; {
			n, err := c.Write(buf[:min(int64(len(buf)), left)])
			s.written.Add(int64(n))
			left -= int64(n)
			if err != nil {
				return
			}
		}
	})
	return s
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// sumOf is the hash of size bytes of the pattern, as sourceServer sends them.
func sumOf(size int64) [32]byte {
	h := sha256.New()
	buf := pattern(64 << 10)
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		h.Write(buf[:n])
		left -= n
	}
	return [32]byte(h.Sum(nil))
}

// A client that does not read holds the instance back through the route:
// the proxy stops reading the instance when the client's side is full, so
// what the instance got written is bounded by the sockets' buffers, far
// from all of it; and then every byte arrives, in order, and EOF.
func TestTCPRouteBackpressure(t *testing.T) {
	const size = 256 << 20
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "src"}}})
	src := newSourceServer(t, size)
	e.register("src", "src", src.addr, 1)
	e.synced()
	d := net.Dialer{Control: nil}
	c, err := d.Dial("tcp", e.addr("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(64 << 10) // no autotuning on the client's side
	last := int64(-1)
	eventually.True(t, 30*time.Second, "the instance's writes stall", func() bool {
		w := src.written.Load()
		stalled := w > 0 && w == last
		last = w
		return stalled
	})
	if w := src.written.Load(); w >= 96<<20 {
		t.Fatalf("the instance wrote %d MiB to a client that reads nothing; want the proxy to stop reading it", w>>20)
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	n, err := io.Copy(h, bufio.NewReaderSize(c, 64<<10))
	if err != nil || n != size || [32]byte(h.Sum(nil)) != sumOf(size) {
		t.Fatalf("read %d bytes (%v); want %d bytes of the pattern, then EOF", n, err, int64(size))
	}
}

// An instance that writes and closes at once: what it wrote reaches a
// client that reads slowly, all of it, before the client sees EOF.
func TestTCPRouteInstanceCloseFlushes(t *testing.T) {
	const size = 8 << 20
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "src"}}})
	src := newSourceServer(t, size)
	e.register("src", "src", src.addr, 1)
	e.synced()
	c, err := net.Dial("tcp", e.addr("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(32 << 10)
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	buf := make([]byte, 4<<10) // small reads: the proxy's side fills up
	var n int64
	for {
		k, err := c.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
	}
	if n != size || [32]byte(h.Sum(nil)) != sumOf(size) {
		t.Fatalf("read %d bytes; want %d bytes of the pattern, then EOF", n, int64(size))
	}
}

// Connections through the route end with the proxy's close: none is left
// open on the instance, and a second Close is harmless.
func TestTCPRouteCloseEndsConnections(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo"}}})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1)
	e.synced()
	var cs []net.Conn
	for range 5 {
		c, _ := dialEcho(t, e.addr("127.0.0.1:0"))
		cs = append(cs, c)
	}
	e.tcp.Close()
	e.tcp.Close()
	for _, c := range cs {
		eventually.True(t, 10*time.Second, "the proxy's close ends the connection", func() bool { return closedByPeer(c) })
	}
	eventually.True(t, 10*time.Second, "the instance's connections end", func() bool { return a.open() == 0 })
}

// An instance registered by host name is reached too (the event loop, which
// cannot resolve a name without blocking, hands such a connection to the
// goroutine engine).
func TestTCPRouteInstanceByName(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo"}}})
	a := newEchoServer(t, "A", nil)
	_, port, _ := net.SplitHostPort(a.addr)
	e.register("a", "echo", net.JoinHostPort("localhost", port), 1)
	e.synced()
	for range 3 {
		c, name := dialEcho(t, e.addr("127.0.0.1:0"))
		if name != "A" {
			t.Fatalf("answered by %q", name)
		}
		roundTrip(t, c, "by name\n")
		c.Close()
	}
}
