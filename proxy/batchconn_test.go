package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	return client, server
}

// TestBatchConnOrderAndClose: records written from two goroutines in turn
// (as tls.Conn and the HTTP/2 framer do, one Write at a time) reach the
// peer whole and in order, and Close right after the last Write still
// sends it: a GOAWAY written just before closing is not lost.
func TestBatchConnOrderAndClose(t *testing.T) {
	c, peer := tcpPair(t)
	defer peer.Close()
	bc := newBatchConn(c, true)
	const n = 20000
	got := make(chan error, 1)
	go func() {
		r := bufio.NewReader(peer)
		var rec [12]byte
		for i := uint64(0); i < n; i++ {
			if _, err := io.ReadFull(r, rec[:]); err != nil {
				got <- err
				return
			}
			if v := binary.BigEndian.Uint64(rec[:8]); v != i || string(rec[8:]) != "abcd" {
				got <- fmt.Errorf("record %d: got %d %q", i, v, rec[8:])
				return
			}
		}
		if _, err := r.ReadByte(); err != io.EOF {
			got <- err
			return
		}
		got <- nil
	}()
	turn := make(chan uint64)
	done := make(chan struct{})
	writer := func() {
		defer func() { done <- struct{}{} }()
		for i := range turn {
			var rec [12]byte
			binary.BigEndian.PutUint64(rec[:8], i)
			copy(rec[8:], "abcd")
			if m, err := bc.Write(rec[:]); m != len(rec) || err != nil {
				t.Errorf("write %d: %d, %v", i, m, err)
			}
			if i+1 < n {
				turn <- i + 1
			} else {
				close(turn)
			}
		}
	}
	go writer()
	go writer()
	turn <- 0
	<-done
	<-done
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// TestBatchConnPeerGone: once the peer has closed, Write reports an
// error rather than taking bytes for ever, and Close returns.
func TestBatchConnPeerGone(t *testing.T) {
	c, peer := tcpPair(t)
	peer.Close()
	bc := newBatchConn(c, true)
	buf := make([]byte, 16<<10)
	var err error
	for i := 0; i < 10000 && err == nil; i++ {
		_, err = bc.Write(buf)
		if err == nil {
			time.Sleep(time.Millisecond)
		}
	}
	if err == nil {
		t.Fatal("writes to a closed peer never failed")
	}
	bc.Close()
}

// TestBatchConnStalledPeer: a peer that reads nothing fills the buffers;
// Write then blocks (the backpressure of a plain connection) and Close
// gives up on the bytes still waiting after its second, rather than hanging.
func TestBatchConnStalledPeer(t *testing.T) {
	c, peer := tcpPair(t)
	defer peer.Close()
	bc := newBatchConn(c, true)
	buf := make([]byte, 64<<10)
	blocked := make(chan struct{})
	go func() {
		defer close(blocked)
		for i := 0; i < 10000; i++ { // socket buffers plus batchMax, then it blocks
			if _, err := bc.Write(buf); err != nil {
				return
			}
		}
		t.Error("10000 writes of 64 KiB to a peer that reads nothing did not block")
	}()
	select {
	case <-blocked:
		t.Fatal("Write failed instead of waiting for the peer")
	case <-time.After(200 * time.Millisecond):
	}
	closed := make(chan struct{})
	go func() { bc.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung on a peer that reads nothing")
	}
	<-blocked // the blocked Write returns with the connection closed
}
