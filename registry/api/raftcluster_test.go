package api_test

// Helpers of the Raft-backed API tests: real hashicorp/raft nodes on
// loopback with short timeouts, each behind a real api.Server, and a
// server port that carries both Raft and the server's internal HTTP, as
// the agent's does: connections whose first byte is an HTTP method's go to
// ServerPortHandler, the others to the Raft transport.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

func fastRaft(c *hraft.Config) {
	c.HeartbeatTimeout = 400 * time.Millisecond
	c.ElectionTimeout = 400 * time.Millisecond
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

// consensus is the agent's side of api.Consensus, fixed for a test.
type consensus struct {
	node    *raft.Node
	servers func() []string
}

func (c consensus) Node() *raft.Node { return c.node }
func (c consensus) Servers() []string {
	if c.servers == nil {
		return nil
	}
	return c.servers()
}

// portMux is a server port: Raft and HTTP on one listener.
type portMux struct {
	ln       net.Listener
	raftAddr string
	http     *connListener
	fwd      *connListener // connections of forwarded frames, their first byte read
	// noFrames routes frame connections to HTTP, as a server that does
	// not know them would.
	noFrames atomic.Bool
	fwdConns atomic.Int64 // frame connections accepted
	// httpConns counts the HTTP and frame connections accepted
	// (forwarding reuses them).
	httpConns atomic.Int64
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup
}

func newPortMux(t *testing.T) *portMux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &portMux{ln: ln, http: newConnListener(ln.Addr()), fwd: newConnListener(ln.Addr()), conns: map[net.Conn]struct{}{}}
}

func (m *portMux) addr() string { return m.ln.Addr().String() }

func (m *portMux) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		c.Close()
		return false
	}
	m.conns[c] = struct{}{}
	return true
}

func (m *portMux) serve() {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			c, err := m.ln.Accept()
			if err != nil {
				return
			}
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				m.route(c)
			}()
		}
	}()
}

func (m *portMux) route(c net.Conn) {
	br := bufio.NewReader(c)
	b, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	if b[0] == raft.ForwardByte && !m.noFrames.Load() {
		br.Discard(1)
		m.httpConns.Add(1)
		m.fwdConns.Add(1)
		m.fwd.push(&peekedConn{Conn: c, r: br})
		return
	}
	if b[0] >= 'A' && b[0] <= 'Z' || b[0] == raft.ForwardByte { // an HTTP method
		m.httpConns.Add(1)
		m.http.push(&peekedConn{Conn: c, r: br})
		return
	}
	if !m.track(c) {
		return
	}
	defer c.Close()
	up, err := net.Dial("tcp", m.raftAddr)
	if err != nil {
		return
	}
	if !m.track(up) {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(up, br)
		up.Close()
		close(done)
	}()
	io.Copy(c, up)
	c.Close()
	<-done
}

func (m *portMux) close() {
	m.ln.Close()
	m.http.Close()
	m.fwd.Close()
	m.mu.Lock()
	m.closed = true
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// connListener hands the HTTP connections of a portMux to an http.Server.
type connListener struct {
	addr net.Addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newConnListener(a net.Addr) *connListener {
	return &connListener{addr: a, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return l.addr }

// raftAgent is one agent of a Raft-backed test: a server (node != nil) or
// a client.
type raftAgent struct {
	name     string
	node     *raft.Node
	reg      *registry.Registry
	srv      *api.Server
	client   *consul.Client
	base     string // the public API
	port     string // the server port (Raft and internal HTTP); "" on a client
	mux      *portMux
	stopRaft func()
	stop     func() // everything
	stopped  atomic.Bool
}

// freePort answers a loopback address nothing listens on now: the Raft
// transport binds its own listener, behind the test's server port.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// startRaftAgent starts a server when server is true, else a client whose
// servers are servers().
func startRaftAgent(t *testing.T, name string, server bool, servers func() []string, adjust func(*api.Config)) *raftAgent {
	t.Helper()
	return startRaftAgentReg(t, name, server, servers, adjust, nil)
}

// startRaftAgentReg is startRaftAgent with the registry's config edited.
func startRaftAgentReg(t *testing.T, name string, server bool, servers func() []string, adjust func(*api.Config), edit func(*registry.Config)) *raftAgent {
	t.Helper()
	return startRaftAgentTuned(t, name, server, servers, adjust, edit, nil)
}

// startRaftAgentTuned is startRaftAgentReg with the server's raft.Config
// adjusted last.
func startRaftAgentTuned(t *testing.T, name string, server bool, servers func() []string, adjust func(*api.Config), edit func(*registry.Config), tune func(*raft.Config)) *raftAgent {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = name
	rcfg.Address = "127.0.0.1"
	if edit != nil {
		edit(&rcfg)
	}
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &raftAgent{name: name, reg: reg}
	var mux *portMux
	ctx, cancel := context.WithCancel(context.Background())
	var raftDone chan error
	if server {
		mux = newPortMux(t)
		var n *raft.Node
		for attempt := 0; ; attempt++ {
			bind := freePort(t)
			rc := raft.Config{ID: name, Bind: bind, Advertise: mux.addr(), Tune: fastRaft,
				ApplyTimeout: 5 * time.Second}
			if tune != nil {
				tune(&rc)
			}
			n, err = raft.New(rc)
			if err == nil {
				mux.raftAddr = bind
				break
			}
			if attempt == 5 {
				t.Fatal(err)
			}
		}
		a.node, a.port, a.mux = n, mux.addr(), mux
		rctx, rcancel := context.WithCancel(ctx)
		raftDone = make(chan error, 1)
		go func() { raftDone <- n.Run(rctx) }()
		var once sync.Once
		a.stopRaft = func() {
			once.Do(func() {
				rcancel()
				if err := <-raftDone; err != nil {
					t.Errorf("raft Run: %v", err)
				}
			})
		}
	}
	acfg := api.DefaultConfig()
	acfg.Registry = reg
	acfg.RPCHoldTimeout = 3 * time.Second
	acfg.Consensus = consensus{node: a.node, servers: servers}
	if adjust != nil {
		adjust(&acfg)
	}
	a.srv, err = api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.srv.Run(ctx, ln); err != nil {
			t.Errorf("api Run: %v", err)
		}
	}()
	var inner *http.Server
	if server {
		// The server port serves the mirror too, as the agent's does; the
		// tests that need the registries to follow start the mirrors
		// (startMirrors).
		port := http.NewServeMux()
		port.Handle(raft.MirrorPath, raft.MirrorHandler(a.node))
		port.Handle(raft.PeersPath, a.node.PeersHandler())
		port.Handle("/", a.srv.ServerPortHandler())
		inner = &http.Server{Handler: port, BaseContext: func(net.Listener) context.Context { return ctx }}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := inner.Serve(mux.http); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				t.Errorf("server port: %v", err)
			}
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.srv.ServeForwards(ctx, mux.fwd, port); err != nil {
				t.Errorf("forwards: %v", err)
			}
		}()
		mux.serve()
	}
	a.stop = func() {
		if !a.stopped.CompareAndSwap(false, true) {
			return
		}
		cancel()
		if inner != nil {
			inner.Close()
			mux.close()
		}
		wg.Wait()
		if a.stopRaft != nil {
			a.stopRaft()
		}
	}
	t.Cleanup(a.stop)
	a.base = "http://" + ln.Addr().String()
	a.client, err = consul.NewClient(&consul.Config{Address: ln.Addr().String(), Scheme: "http"})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// startSingleServer is one server that leads a group of one.
func startSingleServer(t *testing.T) *raftAgent {
	t.Helper()
	a := startRaftAgent(t, "s0", true, nil, nil)
	if err := a.node.Bootstrap([]raft.Server{{ID: "s0", Address: a.port, Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "s0 leads", a.node.IsLeader)
	return a
}

// startGroup is three servers in one group (each registry knowing the
// others and the client node "c0" alive) and one client.
func startGroup(t *testing.T) (servers []*raftAgent, client *raftAgent) {
	t.Helper()
	var ports []string
	for i := range 3 {
		servers = append(servers, startRaftAgent(t, fmt.Sprintf("s%d", i), true, nil, nil))
		ports = append(ports, servers[i].port)
	}
	var members []raft.Server
	for _, s := range servers {
		members = append(members, raft.Server{ID: s.name, Address: s.port, Voter: true})
	}
	for _, s := range servers {
		if err := s.node.Bootstrap(members); err != nil {
			t.Fatal(err)
		}
		for _, o := range append(servers, &raftAgent{name: "c0"}) {
			if o.name != s.name {
				s.reg.SetMemberStatus(o.name, "127.0.0.1", registry.MemberAlive)
			}
		}
	}
	client = startRaftAgent(t, "c0", false, func() []string { return ports }, nil)
	eventually.True(t, 10*time.Second, "a leader", func() bool { return leaderOf(servers) != nil })
	return servers, client
}

// followerOf is a server of servers other than lead.
func followerOf(servers []*raftAgent, lead *raftAgent) *raftAgent {
	for _, s := range servers {
		if s != lead {
			return s
		}
	}
	return nil
}

func leaderOf(servers []*raftAgent) *raftAgent {
	for _, s := range servers {
		if !s.stopped.Load() && s.node.IsLeader() {
			return s
		}
	}
	return nil
}
