package raft

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// FuzzServerPortRefuses sends arbitrary bytes to a server port that
// authenticates with the gossip keyring: whatever they are (a plain Raft
// or HTTP opening, TLS records, garbage), the connection reaches neither
// Raft nor the internal HTTP, the port closes it (it never hangs past its
// handshake bound), and the port goes on accepting.
func FuzzServerPortRefuses(f *testing.F) {
	for _, s := range []string{
		"\x01", "\x01\x00\x00\x00", "GET /pier/v1/raft/peers HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x04", "\x04\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", "\x04\x16\x03\x03\xff\xff",
		"\x04\x15\x03\x03\x00\x02\x02\x28", "\x00", "\xff\xff\xff\xff",
	} {
		f.Add([]byte(s))
	}
	kr := newTestKeyring(gossipKey(9))
	p, err := ListenServerPort("127.0.0.1:0", "", KeyringSecurity(kr.src, nil))
	if err != nil {
		f.Fatal(err)
	}
	defer p.Close()
	var delivered atomic.Int64
	done := make(chan struct{}, 2)
	for _, l := range []net.Listener{p.raft, p.http} {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				delivered.Add(1)
				c.Close()
			}
		}()
	}
	defer func() { p.Close(); <-done; <-done }()
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(handshakeTimeout + 2*time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("the port held a connection past its handshake bound for %q", data)
			}
		}
		if n := delivered.Load(); n != 0 {
			t.Fatalf("%d connections got past the port's security (last %q)", n, data)
		}
	})
}
