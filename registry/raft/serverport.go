package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
)

// raftByte opens every Raft connection on the server port (Consul's
// rpcRaft); ForwardByte a connection of forwarded requests in frames
// (registry/api's forward.go); any other first byte is the servers'
// internal HTTP.
const (
	raftByte    = 0x01
	ForwardByte = 0x02
)

// handshakeTimeout bounds how long a new connection may take to send its
// first byte before it is dropped.
const handshakeTimeout = 5 * time.Second

// ServerPort is the one TCP port a server listens on for the other
// servers (Consul's ports.server, 8300): Raft and the servers' internal
// HTTP share it, told apart by the first byte a client sends. The agent
// owns it: it serves an http.Server on HTTP(), hands the port to New in
// Config.Port, and closes it after Node.Run returns.
type ServerPort struct {
	ln        net.Listener
	advertise *net.TCPAddr
	raft      *subListener
	http      *subListener
	fwd       *subListener
	sec       *Security // nil: plain

	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	closed    bool
	pending   map[net.Conn]struct{} // connections still sending their first byte
	wg        sync.WaitGroup
}

// ListenServerPort listens on bind (host:port; port 0 picks one) and
// answers advertise as the address other servers dial. advertise may be
// empty (the bound address, which must then not be a wildcard), a host
// (with the bound port) or host:port. sec says who may connect, and how
// Raft dials the other servers (portsec.go); nil: anyone, in plain.
func ListenServerPort(bind, advertise string, sec *Security) (*ServerPort, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("raft: server port: %w", err)
	}
	bound := ln.Addr().(*net.TCPAddr)
	adv, err := advertiseTCP(advertise, bound)
	if err != nil {
		ln.Close()
		return nil, err
	}
	p := &ServerPort{ln: ln, advertise: adv, sec: sec, done: make(chan struct{}), pending: map[net.Conn]struct{}{}}
	p.raft = &subListener{p: p, ch: make(chan net.Conn), done: make(chan struct{})}
	p.http = &subListener{p: p, ch: make(chan net.Conn), done: make(chan struct{})}
	p.fwd = &subListener{p: p, ch: make(chan net.Conn), done: make(chan struct{})}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func advertiseTCP(advertise string, bound *net.TCPAddr) (*net.TCPAddr, error) {
	if advertise == "" {
		if bound.IP.IsUnspecified() {
			return nil, fmt.Errorf("raft: server port bound to %s: an advertise address is needed", bound)
		}
		return bound, nil
	}
	host, port, err := net.SplitHostPort(advertise)
	if err != nil {
		host, port = advertise, strconv.Itoa(bound.Port)
	}
	if port == "0" {
		port = strconv.Itoa(bound.Port)
	}
	a, err := net.ResolveTCPAddr("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return nil, fmt.Errorf("raft: advertise address %q: %w", advertise, err)
	}
	if a.IP == nil || a.IP.IsUnspecified() {
		return nil, fmt.Errorf("raft: advertise address %q is not one other servers can dial", advertise)
	}
	return a, nil
}

// Addr is the advertised host:port.
func (p *ServerPort) Addr() string { return p.advertise.String() }

// HTTP is the listener of the port's HTTP connections (first byte not
// consumed) for the agent's http.Server. Closing it stops only the HTTP
// side.
func (p *ServerPort) HTTP() net.Listener { return p.http }

// Forwards is the listener of the port's connections that opened with
// ForwardByte (that byte consumed), for the API's frame server
// (registry/api's ServeForwards). Closing it stops only that side.
func (p *ServerPort) Forwards() net.Listener { return p.fwd }

// streamLayer is what hashicorp/raft's NetworkTransport runs on.
func (p *ServerPort) streamLayer() hraft.StreamLayer { return raftLayer{p.raft} }

// Security is how the port authenticates, for the dialers of its
// internal HTTP (Security.DialContext); nil: plain.
func (p *ServerPort) Security() *Security { return p.sec }

// Close stops accepting, drops connections that have not sent their first
// byte and waits for every goroutine of the port. Connections already
// handed out belong to whoever accepted them.
func (p *ServerPort) Close() error {
	var err error
	p.closeOnce.Do(func() {
		close(p.done)
		err = p.ln.Close()
		p.mu.Lock()
		p.closed = true
		for c := range p.pending {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return err
}

func (p *ServerPort) serve() {
	defer p.wg.Done()
	pause := 5 * time.Millisecond
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, go on.
			select {
			case <-p.done:
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, time.Second)
			continue
		}
		pause = 5 * time.Millisecond
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.pending[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		// Each connection's first byte is read on its own goroutine, so a
		// client that sends nothing delays only itself.
		go p.sniff(c)
	}
}

// errRefused: Security turned a connection away.
var errRefused = errors.New("raft: connection refused by the port's security")

func (p *ServerPort) sniff(c net.Conn) {
	defer p.wg.Done()
	raw := c
	var b [1]byte
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	_, err := io.ReadFull(c, b[:])
	var first byte
	if err == nil {
		// The TLS handshake, when there is one, runs under the same
		// deadline, and Close can still end it.
		var ok bool
		if c, first, ok = p.sec.accept(c, b[0]); !ok {
			err = errRefused
		}
	}
	p.mu.Lock()
	delete(p.pending, raw)
	closed := p.closed
	p.mu.Unlock()
	if err != nil || closed || c.SetDeadline(time.Time{}) != nil {
		raw.Close()
		return
	}
	b[0] = first
	switch b[0] {
	case raftByte:
		p.raft.deliver(c)
		return
	case ForwardByte:
		p.fwd.deliver(c) // its first byte read
		return
	}
	p.http.deliver(&peekedConn{Conn: c, first: b[:]})
}

// subListener is one protocol's side of the port.
type subListener struct {
	p    *ServerPort
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *subListener) deliver(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	case <-l.p.done:
		c.Close()
	}
}

func (l *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
	case <-l.p.done:
	}
	return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.p.advertise, Err: net.ErrClosed}
}

func (l *subListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *subListener) Addr() net.Addr { return l.p.advertise }

type raftLayer struct{ *subListener }

// Dial opens a Raft connection to another server's port.
func (l raftLayer) Dial(address hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	c, err := l.p.sec.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	if timeout > 0 {
		c.SetWriteDeadline(time.Now().Add(timeout))
	}
	if _, err := c.Write([]byte{raftByte}); err != nil {
		c.Close()
		return nil, err
	}
	c.SetWriteDeadline(time.Time{})
	return c, nil
}

// peekedConn gives back the byte the port read to tell the protocol.
type peekedConn struct {
	net.Conn
	first []byte
}

func (c *peekedConn) Read(b []byte) (int, error) {
	if len(c.first) > 0 {
		n := copy(b, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
