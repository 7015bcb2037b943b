package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestIdleConnsHoldNothing opens 1,000 keep-alive connections, sends one
// request on each, and leaves them idle: on the event loop they add no
// goroutine and little memory (pooled buffers went back when each went
// idle), and each still answers its next request.
func TestIdleConnsHoldNothing(t *testing.T) {
	const conns = 1000
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)
	e.synced()
	if code, _ := e.get("", "/warm"); code != 200 {
		t.Fatalf("warm-up: %d", code)
	}
	e.http.CloseIdleConnections()

	settle := func() (goroutines int, mem uint64) {
		var ms runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapInuse + ms.StackInuse
	}
	g0, m0 := settle()
	cs := make([]net.Conn, 0, conns)
	brs := make([]*bufio.Reader, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	req := []byte("GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	for range conns {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		br := bufio.NewReaderSize(c, 512)
		brs = append(brs, br)
		if err := httpRoundTrip(c, br, req); err != nil {
			t.Fatal(err)
		}
	}
	// The requests are answered; what serves them may still be letting go.
	var g1 int
	var m1 uint64
	eventually.True(t, 10*time.Second, "the goroutines that served the requests end", func() bool {
		g1, m1 = settle()
		return e.p.loops == nil || g1 <= g0+5
	})
	perConn := int64(m1-m0) / conns
	t.Logf("engine %s: %d idle connections: %+d goroutines, %d B each (heap and stacks, client side included)",
		testEngine, conns, g1-g0, perConn)
	if e.p.loops != nil {
		if perConn > 3000 {
			t.Errorf("%d B per idle connection: the event loop should hold no buffer for one", perConn)
		}
		if n := e.p.loops.openConns(); n != conns {
			t.Errorf("the loop holds %d connections, want %d", n, conns)
		}
	}
	// Every one of them still serves.
	for i, c := range cs {
		if err := httpRoundTrip(c, brs[i], req); err != nil {
			t.Fatalf("connection %d after idling: %v", i, err)
		}
	}
}

// httpRoundTrip writes req on c and reads one response from br.
func httpRoundTrip(c net.Conn, br *bufio.Reader, req []byte) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("status %d, body: %v", resp.StatusCode, err)
	}
	return nil
}

// TestH2CListenerKeepsHTTP1Alive: with h2c on, an HTTP/1.1 connection is
// sorted first (its first bytes read to tell it from HTTP/2) and still
// serves request after request, on either engine; the event loop parks it
// between them like any other.
func TestH2CListenerKeepsHTTP1Alive(t *testing.T) {
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.Routes = []Route{{Path: "/", Service: "api"}}
	})
	e.register("api-1", "api", b.addr, 1)
	e.synced()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	req := []byte("GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
	for i := range 3 {
		if err := httpRoundTrip(c, br, req); err != nil {
			t.Fatalf("request %d on one connection: %v", i+1, err)
		}
		time.Sleep(50 * time.Millisecond) // parked between them on the event loop
	}
}

// TestRequestArrivingWhileServed sends a next request on a keep-alive
// connection while the one before it is still with its instance (so after
// the proxy read everything there was), and one after a request whose body
// made the proxy wait for the client: both are answered. On the event loop
// such bytes come while the connection is active, and only their edge says
// they are there once it would park.
func TestRequestArrivingWhileServed(t *testing.T) {
	b := newBackend(t, "api")
	b.delay = func(r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(200 * time.Millisecond)
		}
	}
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)
	e.synced()

	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	read := func(what string) {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", what, resp.StatusCode)
		}
	}
	for i := 0; i < 3; i++ {
		fmt.Fprintf(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
		time.Sleep(50 * time.Millisecond) // the proxy has read it and waits for the instance
		fmt.Fprintf(c, "GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
		read("the slow request")
		read("the request sent while it was served")
	}
	// A body in two parts: the proxy waits for the second. The next
	// request comes only once the answer is read.
	for i := 0; i < 3; i++ {
		fmt.Fprintf(c, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
		time.Sleep(50 * time.Millisecond)
		fmt.Fprintf(c, "def")
		read("the request with a body in two parts")
		fmt.Fprintf(c, "GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
		read("the request after it")
	}
}
