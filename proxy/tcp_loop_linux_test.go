package proxy

import (
	"net"
	"sync"

	"golang.org/x/sys/unix"
	"testing"
)

// On the event loop, a relayed connection with nothing in flight holds no
// buffer, however many bytes it moved.
func TestTCPLoopIdleHoldsNoBuffer(t *testing.T) {
	if testEngine != EngineEventLoop {
		t.Skip("the event loop's own bookkeeping")
	}
	e := newTCPEnv(t, nil, TCPConfig{Routes: []TCPRoute{{Listen: "127.0.0.1:0", Service: "echo"}}})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1)
	e.synced()
	var cs []net.Conn
	for range 8 {
		c, _ := dialEcho(t, e.addr("127.0.0.1:0"))
		roundTrip(t, c, string(make([]byte, 100<<10))+"\n")
		cs = append(cs, c)
	}
	var mu sync.Mutex // the loops run f at once
	conns, held := 0, 0
	e.tcp.loops.do(func(lp *tcpLoop) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range lp.conns {
			for _, fd := range []int32{c.client.fd, c.inst.fd} {
				if v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
					t.Errorf("TCP_NODELAY on a relayed socket: %d, %v; want it set (as the goroutine engine sets it)", v, err)
				}
			}
			conns++
			if c.up.buf != nil || c.down.buf != nil {
				held++
			}
		}
	})
	if conns != len(cs) || held != 0 {
		t.Fatalf("%d connections on the loops, %d holding a buffer; want %d, none", conns, held, len(cs))
	}
}
