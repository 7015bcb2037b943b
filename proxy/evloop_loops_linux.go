//go:build linux

package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// loopGroup is the event-loop engine's loops (Config.Loops, GOMAXPROCS by
// default): each a loop of evloop_linux.go with its own epoll set, its own
// keep-alive connections to the instances and its own fast-path state, so
// that the requests it serves on itself touch nothing another loop
// touches. One loop serves at most one core's worth of requests, as one
// nginx worker does; with one loop per core the front door can use the
// machine, and a stall on one (a long response to build, the scheduler
// taking its thread away) holds only the requests that loop has in hand.
//
// One goroutine accepts, for all of them, and gives each new connection to
// the loop with the fewest open connections (the next in turn among equals).
// The listener is the caller's (Run's ln: an agent's, a test's, h2c's
// split listener), so loops cannot each open one of their own with
// SO_REUSEPORT, and the kernel's reuseport hash would spread a few
// connections unevenly anyway; an accept costs one system call per
// connection, not per request, and keep-alive connections are what a front
// door mostly serves. Counting open connections rather than taking turns
// keeps the loops even when connections of one loop close and the others'
// stay.
//
// What the loops share they share through atomics: the backends' in-flight
// counts and passive-failure state (lb), the metrics' counters, the
// connection limit (the sum of the loops' counts). The access log's short
// critical section is the goroutine engine's too.
type loopGroup struct {
	p  *Proxy
	ls []*loop
	rr atomic.Uint32 // where the search for the least-loaded loop starts

	mu        sync.Mutex
	lf        *os.File // serve's duplicate of the listener's socket
	lnStopped bool
}

// newLoopGroup starts n loops (n > 0) serving with srv.
func newLoopGroup(p *Proxy, srv *fasthttp.Server, n int) (*loopGroup, error) {
	g := &loopGroup{p: p}
	// fasthttp's buffers go back to its pools when ServeConn returns, which
	// it does whenever the connection parks; ReduceMemoryUsage would also
	// read each request's first byte alone (a system call more).
	srv.ConnState = func(c net.Conn, s fasthttp.ConnState) {
		lc, ok := c.(*loopConn)
		if !ok {
			return
		}
		switch s {
		case fasthttp.StateIdle:
			lc.peek = true
		case fasthttp.StateActive:
			lc.peek, lc.served = false, true
		}
	}
	var err error
	for range n {
		var l *loop
		if l, err = newLoop(g, srv, n); err != nil {
			break
		}
		g.ls = append(g.ls, l)
	}
	for _, l := range g.ls {
		l.start()
	}
	if err != nil {
		g.shutdown(context.Background())
		return nil, err
	}
	return g, nil
}

// pick is the loop a new connection goes to: the one with the fewest open
// connections, the next in turn among equals.
func (g *loopGroup) pick() *loop {
	n := len(g.ls)
	if n == 1 {
		return g.ls[0]
	}
	start := int(g.rr.Add(1) % uint32(n))
	best := g.ls[start]
	bn := best.n.Load()
	for i := 1; i < n; i++ {
		l := g.ls[(start+i)%n]
		if k := l.n.Load(); k < bn {
			best, bn = l, k
		}
	}
	return best
}

// openConns is the client connections the loops hold.
func (g *loopGroup) openConns() int64 {
	if g == nil {
		return 0
	}
	var n int64
	for _, l := range g.ls {
		n += l.n.Load()
	}
	return n
}

// full reports whether max_conns client connections are open.
func (g *loopGroup) full() bool {
	return g.openConns()+int64(g.p.h1Open()) >= int64(g.p.cfg.MaxConns)
}

// serve accepts connections from ln and gives each to a loop until ln is
// closed. From a *net.TCPListener it accepts with accept4 itself: the
// socket never becomes a net.TCPConn.
func (g *loopGroup) serve(ln net.Listener) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return g.serveConns(ln)
	}
	// A listener's raw connection cannot wait for input; a duplicate of
	// its socket as an os.File can. stopAccept closes it with ln.
	f, err := tl.File()
	if err != nil {
		return err
	}
	defer f.Close()
	g.mu.Lock()
	stopped := g.lnStopped
	g.lf = f
	g.mu.Unlock()
	if stopped {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var delay time.Duration
	for {
		var nfd int
		var sa unix.Sockaddr
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			for {
				nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
				if aerr != unix.EINTR {
					return aerr != unix.EAGAIN
				}
			}
		})
		if err != nil {
			if errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if aerr != nil {
			if aerr == unix.ECONNABORTED {
				continue
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			g.p.log.Warn("proxy: accept failed; retrying", "err", os.NewSyscallError("accept4", aerr), "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		// As Go's net does for every TCP connection: a response is sent
		// when written, not held for the client's ACK.
		unix.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		g.pick().addFD(nfd, sockaddrAddrPort(sa), nil)
	}
}

// serveConns takes the connections of a listener that is not a kernel's
// TCP listener (h2c's split listener, a test's).
func (g *loopGroup) serveConns(ln net.Listener) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			g.p.log.Warn("proxy: accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		g.pick().add(c)
	}
}

// stopAccept makes serve return: its listener is closed.
func (g *loopGroup) stopAccept() {
	g.mu.Lock()
	g.lnStopped = true
	f := g.lf
	g.mu.Unlock()
	if f != nil {
		f.Close() // the socket stops listening once both are closed
	}
}

// shutdown stops every loop (ln must be closed and serve returned), all at
// once: parked connections are closed, active ones after their request,
// or when ctx ends.
func (g *loopGroup) shutdown(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range g.ls {
		wg.Add(1)
		go func() { defer wg.Done(); l.shutdown(ctx) }()
	}
	wg.Wait()
}
