//go:build linux

package proxy

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pier-dev/pier/lb"
)

// The event-loop engine's TCP routes (proxy.engine eventloop). One loop per
// core (GOMAXPROCS) runs an epoll set of its own in one goroutine. None of
// the sockets below is registered with Go's netpoller, so a connection
// costs no goroutine and no netpoller registration, only the loop's system
// calls (made raw: none of them blocks); the loop's goroutine waits for
// its set, when it runs out of work, in the netpoller (see wait):
//
//   - the route's listening socket (opened by pier, tcp_listen_linux.go)
//     is in every loop's set, level-triggered, with EPOLLEXCLUSIVE (one
//     loop is woken for a new connection); the woken loop accepts one
//     with accept4 a time it is told;
//   - the instance is connected to without blocking (socket, TCP_NODELAY,
//     connect); its writability says the handshake is over, an error on it
//     that it failed, and then the next instance is tried (the route's
//     tries, as on the goroutine engine: no byte of the client's has been
//     sent yet);
//   - both sockets are in the set, edge-triggered, for reading and writing,
//     each added once; the loop remembers which are readable and writable.
//     Each direction reads into a buffer taken from the loop's free list
//     only when the source is readable and writes it out at once; a write
//     that would block keeps the rest (at most one buffer a direction) and
//     the loop stops reading that source until the destination turns
//     writable again, so a slow reader holds back a fast writer through
//     TCP's own windows. A connection with nothing in flight holds no
//     buffer.
//
// On a listener of SNI routes, the loop reads the ClientHello (within
// tcp_hello_timeout) and then connects as above, the bytes read being the
// first it sends. Two cases stay on the goroutine engine: passthrough on
// the front door's TLS listener (WrapTLS, where the connection may be
// pier's to terminate), and an instance whose address is a host name
// (resolving it would block the loop): the connection is handed over.
//
// Timeouts (connect, the ClientHello's, idle, drain) are checked by a sweep
// of the loop's connections every tick: a second, or an eighth of the
// shortest timeout in the loop, so they end a connection up to a tick
// late. Half-closes pass as on the goroutine engine: the client's EOF is
// passed on to the instance, which may still answer; the instance's EOF
// ends the connection once what it sent is written.
type tcpLoops struct {
	t     *TCPProxy
	loops []*tcpLoop
	wg    sync.WaitGroup // the loops' goroutines

	mu      sync.Mutex
	running bool // started and not yet told to stop
	stopped bool
}

// tcpLoopBuf is the size of a direction's buffer: one read and one write
// move up to this much.
const tcpLoopBuf = 32 << 10

// Kinds of descriptors in a loop's set, in the top bits of an event's
// Pad; a connection's side has a generation in the rest, so that an event
// read in the same batch as its socket's close is not taken for one of
// the next socket given the same descriptor number.
const (
	evConn     int32 = 0
	evListener int32 = 1 << 29
	evWake     int32 = 2 << 29
	evKind     int32 = 3 << 29
)

// tcpLoop is one epoll set and the goroutine that serves it.
type tcpLoop struct {
	ls   *tcpLoops
	epfd int
	epf  *os.File        // epfd, as Go's netpoller watches it
	rc   syscall.RawConn // epf's
	wake int             // eventfd: commands are waiting

	// Owned by the loop's goroutine.
	byFD     []*tcpSide     // the sides of its connections, by descriptor
	gen      int32          // the last side's generation
	free     [][]byte       // buffers not in use
	again    []*tcpLoopConn // connections whose read budget ran out: served again before the next wait
	now      int64          // unix nanoseconds at the last wake-up
	deadline int64          // the read deadline set on epf
	tick     time.Duration
	sweep    int64 // when the next sweep is due
	events   []unix.EpollEvent

	mu        sync.Mutex             // guards what follows, which other goroutines read or ask for
	conns     []*tcpLoopConn         // open connections, each knowing its index
	listeners map[int32]*tcpListener // by descriptor
	drops     []chan struct{}        // closed once the loop dropped the listeners deleted from listeners
	calls     []func()               // run on the loop's goroutine (tests look at its state this way)
	paused    []int32                // listeners out of the set until the next sweep: accept ran out of descriptors
	stopping  bool                   // the proxy is closing: end every connection and return
	exited    bool                   // the goroutine returned; listeners are not in the set any more
}

func newTCPLoops(t *TCPProxy) (*tcpLoops, error) {
	ls := &tcpLoops{t: t}
	for range runtime.GOMAXPROCS(0) {
		lp, err := newTCPLoop(ls)
		if err != nil {
			ls.closeFDs()
			return nil, err
		}
		ls.loops = append(ls.loops, lp)
	}
	return ls, nil
}

func newTCPLoop(ls *tcpLoops) (*tcpLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake), Pad: evWake}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// The loop waits for its set in Go's netpoller (see wait), which
	// needs the descriptor non-blocking.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, os.NewSyscallError("fcntl", err)
	}
	epf := os.NewFile(uintptr(epfd), "epoll")
	rc, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		unix.Close(wake)
		return nil, err
	}
	return &tcpLoop{ls: ls, epfd: epfd, epf: epf, rc: rc, wake: wake, tick: time.Second, events: make([]unix.EpollEvent, 256), listeners: map[int32]*tcpListener{}}, nil
}

func (ls *tcpLoops) closeFDs() {
	for _, lp := range ls.loops {
		lp.epf.Close()
		unix.Close(lp.wake)
	}
}

// start runs the loops, each counted in ls.wg.
func (ls *tcpLoops) start() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.running || ls.stopped {
		return
	}
	ls.running = true
	for _, lp := range ls.loops {
		ls.wg.Add(1)
		go func() {
			defer ls.wg.Done()
			lp.run()
		}()
	}
}

// stop tells the loops to end every connection and return, and waits for
// them; loops never started have their descriptors closed.
func (ls *tcpLoops) stop() {
	ls.mu.Lock()
	wasRunning := ls.running
	first := !ls.stopped
	ls.running, ls.stopped = false, true
	ls.mu.Unlock()
	if !first {
		ls.wg.Wait()
		return
	}
	if !wasRunning {
		ls.closeFDs()
		return
	}
	for _, lp := range ls.loops {
		lp.mu.Lock()
		lp.stopping = true
		if !lp.exited {
			lp.signal()
		}
		lp.mu.Unlock()
	}
	ls.wg.Wait()
}

// addListener puts a route's listening socket in every loop's set.
func (ls *tcpLoops) addListener(l *tcpListener) {
	ll := l.ln.(*loopListener)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if !ls.running {
		return
	}
	for _, lp := range ls.loops {
		lp.mu.Lock()
		if !lp.exited {
			lp.listeners[int32(ll.fd)] = l
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ll.fd), Pad: evListener}
			if err := unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, ll.fd, &ev); err != nil {
				ls.t.p.log.Error("tcp route: cannot watch the listener", "listen", ll.addr.String(), "err", err)
			}
		}
		lp.mu.Unlock()
	}
}

// dropListener takes a listening socket out of every loop's set and
// returns once no loop will accept on it.
func (ls *tcpLoops) dropListener(fd int) {
	var wait []chan struct{}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, lp := range ls.loops {
		lp.mu.Lock()
		if _, ok := lp.listeners[int32(fd)]; ok {
			delete(lp.listeners, int32(fd))
			if !lp.exited && ls.running {
				ch := make(chan struct{})
				lp.drops = append(lp.drops, ch)
				wait = append(wait, ch)
				unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, fd, nil)
				lp.signal()
			}
		}
		lp.mu.Unlock()
	}
	for _, ch := range wait {
		<-ch
	}
}

// do runs f on each running loop's goroutine, and returns when all have.
func (ls *tcpLoops) do(f func(*tcpLoop)) {
	var wg sync.WaitGroup
	ls.mu.Lock()
	for _, lp := range ls.loops {
		lp.mu.Lock()
		if ls.running && !lp.exited {
			wg.Add(1)
			lp.calls = append(lp.calls, func() { defer wg.Done(); f(lp) })
			lp.signal()
		}
		lp.mu.Unlock()
	}
	ls.mu.Unlock()
	wg.Wait()
}

// signal wakes the loop to look at its commands. Called with lp.mu held
// and the loop not exited: its eventfd is closed once it has, and the
// number may belong to another descriptor by then.
func (lp *tcpLoop) signal() {
	one := [8]byte{1}
	unix.Write(lp.wake, one[:])
}

// open counts the loops' connections by route.
func (ls *tcpLoops) open(into map[*tcpRoute]int) {
	for _, lp := range ls.loops {
		lp.mu.Lock()
		for _, c := range lp.conns {
			if c.relaying {
				into[c.rt]++
			}
		}
		lp.mu.Unlock()
	}
}

// sync starts or stops the drain of each connection as its instance left
// or rejoined its route's pool (live: the routes still served).
func (ls *tcpLoops) sync(tb *lb.Table, live map[*tcpRoute]bool) {
	now := time.Now().UnixNano()
	for _, lp := range ls.loops {
		lp.mu.Lock()
		for _, c := range lp.conns {
			if !c.relaying {
				continue
			}
			in := live[c.rt] && slices.ContainsFunc(c.rt.pool(tb).Members(), func(m lb.Member) bool { return m.Backend == c.b })
			if in == c.draining {
				c.draining = !in
				if in {
					c.drainAt = 0
					continue
				}
				ls.t.p.log.Info("tcp route: instance left the pool; draining its connection", "service", c.rt.Service, "addr", c.b.Addr(), "drain_timeout", c.rt.drain)
				if c.rt.drain > 0 {
					c.drainAt = now + int64(c.rt.drain)
				}
			}
		}
		lp.mu.Unlock()
	}
}

// run is the loop's goroutine.
func (lp *tcpLoop) run() {
	defer lp.exit()
	lp.now = time.Now().UnixNano()
	lp.sweep = lp.now + int64(lp.tick)
	for {
		n, err := lp.wait()
		lp.now = time.Now().UnixNano()
		if err != nil {
			lp.ls.t.p.log.Error("tcp loop: epoll_wait", "err", err)
			return
		}
		for i := range n {
			ev := &lp.events[i]
			switch ev.Pad & evKind {
			case evConn:
				lp.event(ev.Fd, ev.Pad, ev.Events)
			case evListener:
				lp.accept(ev.Fd)
			case evWake:
				var b [8]byte
				unix.Read(lp.wake, b[:])
				if lp.commands() {
					return
				}
			}
		}
		if len(lp.again) > 0 {
			again := lp.again
			lp.again = nil
			for _, c := range again {
				c.queued = false
				c.serve()
			}
			clear(again)
			if lp.again == nil {
				lp.again = again[:0]
			}
		}
		if lp.now >= lp.sweep {
			if len(lp.paused) > 0 {
				lp.resume()
			}
			lp.sweepConns()
			lp.sweep = lp.now + int64(lp.tick)
		}
	}
}

// wait returns the events ready, waiting for some (or the next sweep)
// in Go's netpoller, where the epoll set is registered like a socket: a
// blocking epoll_wait would have the runtime take the processor away from
// the waiting thread (and sysmon wake every 20 us to do so) each time the
// loop runs out of work, which under a stream of short connections is
// most times. Parked here, the loop costs a goroutine wake-up.
func (lp *tcpLoop) wait() (int, error) {
	n, err := epollWaitRaw(lp.epfd, lp.events)
	if n > 0 || len(lp.again) > 0 || lp.now >= lp.sweep || (err != nil && err != unix.EINTR) {
		return n, err
	}
	if lp.deadline != lp.sweep {
		lp.deadline = lp.sweep
		lp.epf.SetReadDeadline(time.Unix(0, lp.sweep))
	}
	werr := lp.rc.Read(func(fd uintptr) bool {
		n, err = epollWaitRaw(int(fd), lp.events)
		return n > 0 || (err != nil && err != unix.EINTR)
	})
	if werr != nil && !errors.Is(werr, os.ErrDeadlineExceeded) {
		return 0, werr
	}
	if err == unix.EINTR {
		err = nil
	}
	return n, err
}

// commands does what other goroutines asked for; true: return.
func (lp *tcpLoop) commands() bool {
	lp.mu.Lock()
	for _, ch := range lp.drops {
		close(ch)
	}
	lp.drops = lp.drops[:0]
	calls := lp.calls
	lp.calls = nil
	stop := lp.stopping
	lp.mu.Unlock()
	for _, f := range calls {
		f()
	}
	return stop
}

// exit ends every connection and closes the loop's descriptors.
func (lp *tcpLoop) exit() {
	lp.mu.Lock()
	conns := slices.Clone(lp.conns)
	lp.mu.Unlock()
	for _, c := range conns {
		c.close(endStop)
	}
	lp.mu.Lock()
	lp.exited = true
	for _, f := range lp.calls {
		f()
	}
	lp.calls = nil
	for _, ch := range lp.drops {
		close(ch)
	}
	lp.drops = nil
	for fd := range lp.listeners {
		unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	}
	lp.mu.Unlock()
	lp.epf.Close()
	unix.Close(lp.wake)
}

// accept takes one connection waiting on a listener. The listener is
// level-triggered: if more are waiting, the next epoll_wait says so again
// (in the same call as the connections' events), which costs less than the
// accept that would find the queue empty after the last one.
func (lp *tcpLoop) accept(fd int32) {
	lp.mu.Lock()
	l := lp.listeners[fd]
	lp.mu.Unlock()
	if l == nil {
		return
	}
	cfd, err := accept4(int(fd))
	if err != nil {
		if isFileLimit(err) {
			// The listener stays readable: rather than spin, stop
			// watching it until the next sweep, as the goroutine
			// engine's accept loop sleeps.
			lp.mu.Lock()
			if lp.listeners[fd] != nil && len(lp.paused) == 0 {
				lp.ls.t.p.log.Warn("tcp route: out of file descriptors; accepting again in a while", "listen", l.ln.Addr().String())
			}
			if lp.listeners[fd] != nil && epollCtl(lp.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) == 0 {
				lp.paused = append(lp.paused, fd)
			}
			lp.mu.Unlock()
		}
		return
	}
	c := lp.newConn(cfd)
	if rt := l.plain.Load(); rt != nil {
		c.rt = rt
		c.dial()
		return
	}
	c.l = l
	c.state = lcHello
	c.deadline = lp.now + int64(lp.ls.t.cfg.HelloTimeout)
	lp.setTick(lp.ls.t.cfg.HelloTimeout)
}

// resume watches again the listeners accept stopped watching.
func (lp *tcpLoop) resume() {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	for _, fd := range lp.paused {
		if lp.listeners[fd] != nil {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: fd, Pad: evListener}
			epollCtl(lp.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
		}
	}
	lp.paused = lp.paused[:0]
}

// setTick shortens the sweep's period for a timeout of d.
func (lp *tcpLoop) setTick(d time.Duration) {
	if d <= 0 {
		return
	}
	if t := max(d/8, 5*time.Millisecond); t < lp.tick {
		lp.tick = t
		if s := lp.now + int64(t); s < lp.sweep {
			lp.sweep = s
		}
	}
}

// event notes what epoll reported on one side of a connection and lets
// the connection act on it.
func (lp *tcpLoop) event(fd, gen int32, ev uint32) {
	if int(fd) >= len(lp.byFD) {
		return
	}
	s := lp.byFD[fd]
	if s == nil || s.gen != gen {
		return
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.rd = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.wr = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.rdhup = true
	}
	if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		s.hup = true
	}
	s.c.serve()
}

// sweepConns ends the connections whose timeout passed, and adds the bytes
// moved since the last sweep to the metrics.
func (lp *tcpLoop) sweepConns() {
	lp.mu.Lock()
	var ended []*tcpLoopConn
	var why []tcpEnd
	for _, c := range lp.conns {
		c.flushBytes()
		switch {
		case c.state == lcRelay && c.drainAt != 0 && lp.now >= c.drainAt:
			ended, why = append(ended, c), append(why, endDrained)
		case c.state == lcRelay && lp.now-c.last >= int64(c.rt.idle):
			ended, why = append(ended, c), append(why, endIdle)
		case c.state != lcRelay && lp.now >= c.deadline:
			ended, why = append(ended, c), append(why, endTimeout)
		}
	}
	lp.mu.Unlock()
	for i, c := range ended {
		if why[i] == endTimeout {
			c.timedOut()
			continue
		}
		c.close(why[i])
	}
}

// getBuf takes a buffer off the loop's free list.
func (lp *tcpLoop) getBuf() []byte {
	if n := len(lp.free); n > 0 {
		b := lp.free[n-1]
		lp.free = lp.free[:n-1]
		return b
	}
	return make([]byte, tcpLoopBuf)
}

// putBuf gives a buffer back; the free list keeps as many as the busiest
// moment needed, up to a bound.
func (lp *tcpLoop) putBuf(b []byte) {
	if len(lp.free) < 64 {
		lp.free = append(lp.free, b)
	}
}
