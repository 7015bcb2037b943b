package gossip

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// memNet carries gossip between nodes of one test in memory, as datagrams
// (dropped, as UDP would drop them, when the receiver's queue is full or it
// is gone) and streams (net.Pipe). memberlist's own MockNetwork is not safe
// to grow while nodes run and blocks a sender for ever on a node that
// stopped, so a cluster of it can neither be started one node at a time
// under -race nor shut down.
type memNet struct {
	mu    sync.Mutex
	nodes map[string]*memTransport
	next  int
}

// transport answers a new node's transport, with an address of its own.
func (n *memNet) transport() *memTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nodes == nil {
		n.nodes = map[string]*memTransport{}
	}
	n.next++
	t := &memTransport{
		net:     n,
		addr:    &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000 + n.next},
		packets: make(chan *memberlist.Packet, 1024),
		streams: make(chan net.Conn, 64),
		done:    make(chan struct{}),
	}
	n.nodes[t.addr.String()] = t
	return t
}

func (n *memNet) peer(addr string) *memTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodes[addr]
}

type memTransport struct {
	net     *memNet
	addr    *net.TCPAddr
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
	// drop, when set, loses every datagram to this node it returns true
	// for, as a full socket buffer would.
	drop atomic.Pointer[func([]byte) bool]
	// streamsIn counts the streams opened to this node.
	streamsIn atomic.Int32
}

var _ memberlist.NodeAwareTransport = (*memTransport)(nil)

func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.addr.IP, t.addr.Port, nil
}

func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *memTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	dest := t.net.peer(a.Addr)
	if dest == nil {
		return now, nil // nobody there: lost, as a datagram would be
	}
	if drop := dest.drop.Load(); drop != nil && (*drop)(b) {
		return now, nil
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: t.addr, Timestamp: now}
	select {
	case dest.packets <- p:
	case <-dest.done:
	default: // the receiver's queue is full: dropped
	}
	return now, nil
}

func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *memTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *memTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	dest := t.net.peer(a.Addr)
	if dest == nil {
		return nil, fmt.Errorf("dial %s: connection refused", a.Addr)
	}
	local, remote := net.Pipe()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case dest.streams <- memConn{Conn: remote, local: dest.addr, remote: t.addr}:
		dest.streamsIn.Add(1)
		return memConn{Conn: local, local: t.addr, remote: dest.addr}, nil
	case <-dest.done:
	case <-timer.C:
	}
	local.Close()
	remote.Close()
	return nil, errors.New("dial " + a.Addr + ": " + strconv.Quote("no answer"))
}

func (t *memTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *memTransport) Shutdown() error {
	t.once.Do(func() {
		t.net.mu.Lock()
		delete(t.net.nodes, t.addr.String())
		t.net.mu.Unlock()
		close(t.done)
	})
	return nil
}

// memConn gives a pipe the addresses of the two nodes.
type memConn struct {
	net.Conn
	local, remote net.Addr
}

func (c memConn) LocalAddr() net.Addr  { return c.local }
func (c memConn) RemoteAddr() net.Addr { return c.remote }
