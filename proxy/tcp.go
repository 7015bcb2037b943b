package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pier-dev/pier/lb"
)

// TCPRoute is a route of bytes: connections accepted on Listen (or, with
// SNI, TLS connections naming SNI) go to the least busy healthy instance
// of Service, which keeps each connection for its life.
type TCPRoute struct {
	Listen       string        `json:"listen"`        // host:port or :port; with SNI and no listen, the front door's TLS listener
	SNI          string        `json:"sni"`           // route TLS connections by the server name of their ClientHello, without terminating TLS
	Service      string        `json:"service"`       // required
	IdleTimeout  time.Duration `json:"idle_timeout"`  // 0: the proxy's tcp_idle_timeout
	DrainTimeout time.Duration `json:"drain_timeout"` // 0: the proxy's tcp_drain_timeout

	Source string `json:"-"` // "config", "kv" or "tag"; set by the proxy
	Key    string `json:"-"` // for a route from the KV store, its key
	tag    string // for a route from a tag, the tag: its pool is the instances that carry it
}

// Validate checks a route as written; the error names the field.
func (r *TCPRoute) Validate() error {
	switch {
	case r.Service == "":
		return errors.New("service: required")
	case r.Listen == "" && r.SNI == "":
		return errors.New("listen: required (host:port or :port), unless sni is given")
	case r.IdleTimeout < 0:
		return fmt.Errorf("idle_timeout %s: must not be negative", r.IdleTimeout)
	case r.DrainTimeout < 0:
		return fmt.Errorf("drain_timeout %s: must not be negative", r.DrainTimeout)
	}
	if r.Listen != "" {
		if err := checkListen(r.Listen); err != nil {
			return fmt.Errorf("listen %q: %w", r.Listen, err)
		}
	}
	if r.SNI != "" {
		n, err := cleanServerName(r.SNI)
		if err != nil || strings.HasPrefix(n, ".") || strings.Contains(n, "..") {
			return fmt.Errorf("sni %q: want a host name (letters, digits, - and dots)", r.SNI)
		}
		r.SNI = n
	}
	return nil
}

// checkListen accepts host:port or :port with an IP address (or none) and
// a port of 0-65535 (0: any free port, which Addrs tells).
func checkListen(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want host:port or :port")
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("%q is not an IP address", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q: want 0-65535", port)
	}
	return nil
}

// TCPConfig configures a TCPProxy. The json names are keys of the config
// file's proxy section.
type TCPConfig struct {
	Routes       []TCPRoute    `json:"-"`                 // from the config file
	IdleTimeout  time.Duration `json:"tcp_idle_timeout"`  // no byte either way for this long ends a connection (nginx's proxy_timeout)
	DrainTimeout time.Duration `json:"tcp_drain_timeout"` // a connection to an instance that left its pool is ended after this (0: when it closes)
	HelloTimeout time.Duration `json:"tcp_hello_timeout"` // reading a ClientHello for its server name
	TagHost      string        `json:"-"`                 // the address tag routes (urlprefix-:port proto=tcp) listen on
}

// DefaultTCPConfig returns the TCP proxy's defaults.
func DefaultTCPConfig() TCPConfig {
	return TCPConfig{IdleTimeout: 10 * time.Minute, HelloTimeout: 5 * time.Second}
}

// TCPProxy serves the TCP and SNI passthrough routes. It shares the HTTP
// proxy's balancer (so a connection counts as one in flight on its
// backend, and least-connections weighs HTTP requests and TCP connections
// alike) and its passive health settings (max_fails, fail_timeout, tries).
type TCPProxy struct {
	p     *Proxy
	cfg   TCPConfig
	met   *tcpMetrics // nil: no metrics
	loops *tcpLoops   // the event-loop engine's (tcp_loop_linux.go); nil: a goroutine pair per connection

	mu        sync.Mutex
	listeners map[string]*tcpListener // by listen address
	conns     map[*tcpConn]struct{}
	closed    bool
	wg        sync.WaitGroup // accept loops and connections

	sni     atomic.Pointer[map[string]*tcpRoute] // passthrough names on the front door's TLS listener
	peeking atomic.Int64                         // connections on the TLS listener whose ClientHello is being read

	cfgSNI    map[string]*tcpRoute // the config's passthrough names on the TLS listener
	cfgListen map[string]bool      // the config's listen addresses
	tagMu     sync.Mutex
	tagRoutes map[string]*tcpRoute   // by service and tag, kept across syncs
	kvRoutes  map[string]*kvTCPRoute // by KV key, kept while the key's value is the same; guarded by tagMu
	warned    map[string]bool        // tag problems already logged; guarded by mu
	kvWarned  map[string]string      // bad KV routes already logged (key to index and error); guarded by mu
	bad       []badRoute             // KV routes not served, with why; guarded by mu
}

// tcpRoute is a TCPRoute ready to serve, with its metrics.
type tcpRoute struct {
	TCPRoute
	idle, drain time.Duration
	stats       *tcpStats
}

// pool is the route's pool in t: the service's, or for a tag route the
// instances that carry the tag.
func (r *tcpRoute) pool(t *lb.Table) *lb.Pool {
	if r.tag != "" {
		return t.TagPool(r.Service, r.tag)
	}
	return t.Pool(r.Service)
}

// tcpListener is one listen address with its routes: one plain route, or
// passthrough routes by server name.
type tcpListener struct {
	ln     net.Listener
	source string                               // "config" or "tag"
	plain  atomic.Pointer[tcpRoute]             // nil on an SNI listener
	byName atomic.Pointer[map[string]*tcpRoute] // nil on a plain listener
	logged atomic.Int64                         // unix nanoseconds of the last refusal logged
}

// NewTCP makes the TCP proxy and opens the listeners of the config's
// routes, so that a port in use is an error at start.
func (p *Proxy) NewTCP(cfg TCPConfig) (*TCPProxy, error) {
	def := DefaultTCPConfig()
	if cfg.IdleTimeout < 0 || cfg.DrainTimeout < 0 || cfg.HelloTimeout < 0 {
		return nil, errors.New("proxy: tcp_idle_timeout, tcp_drain_timeout and tcp_hello_timeout must not be negative")
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	if cfg.HelloTimeout == 0 {
		cfg.HelloTimeout = def.HelloTimeout
	}
	t := &TCPProxy{p: p, cfg: cfg, listeners: map[string]*tcpListener{}, conns: map[*tcpConn]struct{}{}}
	var err error
	if t.met, err = newTCPMetrics(p.cfg.Registerer); err != nil {
		return nil, fmt.Errorf("proxy: tcp metrics: %w", err)
	}
	if p.cfg.Engine == EngineEventLoop {
		if t.loops, err = newTCPLoops(t); err != nil {
			return nil, fmt.Errorf("proxy: tcp event loops: %w", err)
		}
	}
	sni := map[string]*tcpRoute{}
	for i := range cfg.Routes {
		r := cfg.Routes[i]
		r.Source = "config"
		if err := r.Validate(); err != nil {
			t.Close() // the loops' descriptors
			return nil, fmt.Errorf("proxy.tcp[%d].%w", i, err)
		}
		rt := t.newRoute(r)
		if r.Listen == "" {
			if _, dup := sni[r.SNI]; dup {
				t.Close()
				return nil, fmt.Errorf("proxy.tcp[%d].sni %q: given twice", i, r.SNI)
			}
			sni[r.SNI] = rt
			continue
		}
		l := t.listeners[r.Listen]
		if l == nil {
			ln, err := t.listen(r.Listen)
			if err != nil {
				t.Close()
				return nil, fmt.Errorf("proxy.tcp[%d].listen: %w", i, err)
			}
			l = &tcpListener{ln: ln, source: "config"}
			t.listeners[r.Listen] = l
		}
		if err := l.add(rt); err != nil {
			t.Close()
			return nil, fmt.Errorf("proxy.tcp[%d]: %w", i, err)
		}
	}
	t.cfgSNI = sni
	t.cfgListen = map[string]bool{}
	for addr := range t.listeners {
		t.cfgListen[addr] = true
	}
	t.sni.Store(&sni)
	return t, nil
}

func (t *TCPProxy) newRoute(r TCPRoute) *tcpRoute {
	rt := &tcpRoute{TCPRoute: r, idle: r.IdleTimeout, drain: r.DrainTimeout}
	if rt.idle == 0 {
		rt.idle = t.cfg.IdleTimeout
	}
	if rt.drain == 0 {
		rt.drain = t.cfg.DrainTimeout
	}
	name := r.Listen
	if r.SNI != "" {
		name = r.SNI
		if r.Listen != "" {
			name = r.SNI + "@" + r.Listen
		}
	}
	rt.stats = t.met.route(name, r.Service)
	return rt
}

// add puts a route on the listener: a listener serves one plain route or
// any number of SNI routes, not both.
func (l *tcpListener) add(rt *tcpRoute) error {
	if rt.SNI == "" {
		if l.plain.Load() != nil || l.byName.Load() != nil {
			return fmt.Errorf("listen %q: a second route on a listener that already has one (only sni routes share a listener)", rt.Listen)
		}
		l.plain.Store(rt)
		return nil
	}
	if l.plain.Load() != nil {
		return fmt.Errorf("listen %q: sni routes cannot share a listener with a route without sni", rt.Listen)
	}
	m := map[string]*tcpRoute{}
	if old := l.byName.Load(); old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	if _, dup := m[rt.SNI]; dup {
		return fmt.Errorf("sni %q: given twice on listen %q", rt.SNI, rt.Listen)
	}
	m[rt.SNI] = rt
	l.byName.Store(&m)
	return nil
}

// Addrs lists the addresses the TCP proxy listens on, by the listen
// address each route gave.
func (t *TCPProxy) Addrs() map[string]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]string, len(t.listeners))
	for k, l := range t.listeners {
		m[k] = l.ln.Addr().String()
	}
	return m
}

// Close closes the listeners and ends every connection. Run calls it when
// its context ends; callers that never ran the proxy call it themselves.
func (t *TCPProxy) Close() {
	t.mu.Lock()
	t.closed = true
	for _, l := range t.listeners {
		l.ln.Close()
	}
	for c := range t.conns {
		c.close()
	}
	t.mu.Unlock()
	if t.loops != nil {
		t.loops.stop()
	}
}

// Run serves the routes until ctx ends: it accepts on the config's
// listeners, opens and closes the listeners of tag routes as tags come and
// go, and drains connections to instances that left their pool.
func (t *TCPProxy) Run(ctx context.Context) error {
	if t.loops != nil {
		t.loops.start()
	}
	t.mu.Lock()
	for _, l := range t.listeners {
		t.serve(l)
	}
	t.mu.Unlock()
	bal := t.p.bal
	for {
		tb := bal.Table()
		t.sync(tb)
		select {
		case <-ctx.Done():
			t.Close()
			t.wg.Wait()
			return nil
		case <-tb.Changed():
		}
	}
}

func (t *TCPProxy) serve(l *tcpListener) {
	if t.loops != nil {
		t.loops.addListener(l)
		return
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		t.acceptLoop(l)
	}()
}

func (t *TCPProxy) acceptLoop(l *tcpListener) {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if isFileLimit(err) {
				// Out of descriptors: back off as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return
		}
		delay = 0
		if !t.track(nil) {
			c.Close()
			return
		}
		go func() {
			defer t.wg.Done()
			if rt := l.plain.Load(); rt != nil {
				t.handle(c, rt, nil)
				return
			}
			t.passthroughOnly(l, c)
		}()
	}
}

// listenTCP opens a TCP route's listener. Accepted connections get no TCP
// keep-alive (nginx's stream so_keepalive defaults to off too): it would
// cost a few setsockopt calls per connection, and the idle timeout is what
// ends a connection whose client went away.
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}

// listen opens a TCP route's listener for the proxy's engine.
func (t *TCPProxy) listen(addr string) (net.Listener, error) {
	if t.loops != nil {
		return listenLoop(addr, t.loops)
	}
	return listenTCP(addr)
}

// isFileLimit reports an accept that failed for want of descriptors: the
// listener is fine and accepting again later will work.
func isFileLimit(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// track counts a goroutine in wg unless the proxy is closed, and with c,
// registers a connection so that Close and draining can end it.
func (t *TCPProxy) track(c *tcpConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if c == nil {
		t.wg.Add(1)
	} else {
		t.conns[c] = struct{}{}
	}
	return true
}

// sync brings the KV and tag routes and the drain timers in line with tb.
// A connection drains when its instance left the route's pool or its
// route is no longer served (a KV key deleted or changed, a tag gone).
func (t *TCPProxy) sync(tb *lb.Table) {
	live := t.syncDynamic(tb)
	t.mu.Lock()
	conns := make([]*tcpConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		in := live[c.rt] && slices.ContainsFunc(c.rt.pool(tb).Members(), func(m lb.Member) bool { return m.Backend == c.b })
		c.setDraining(!in, t)
	}
	if t.loops != nil {
		t.loops.sync(tb, live)
	}
}

// handle proxies one client connection on route rt, after sending hello
// (bytes already read from the client) to the instance.
func (t *TCPProxy) handle(client net.Conn, rt *tcpRoute, hello []byte) {
	defer client.Close()
	pool := rt.pool(t.p.bal.Table())
	var tried [maxTries]*lb.Backend
	var conn net.Conn
	var b *lb.Backend
	for n := 0; n < t.p.cfg.Tries; n++ {
		b = pool.Pick(tried[:n])
		if b == nil {
			break
		}
		tried[n] = b
		c, err := dialInstance(b.Addr(), t.p.bal.ConnectTimeout())
		if err == nil {
			conn = c
			break
		}
		b.Release()
		t.met.connectFailed(rt.stats)
		if b.Fail(t.p.cfg.MaxFails, t.p.cfg.FailTimeout) {
			t.p.log.Warn("backend out of rotation after failures", "service", rt.Service, "addr", b.Addr(), "err", &lb.DialError{Addr: b.Addr(), Err: err})
		}
		b = nil
	}
	if conn == nil {
		t.met.unavailable(rt.stats)
		t.p.log.Warn("tcp route: no instance reachable", "route", rt.Listen, "sni", rt.SNI, "service", rt.Service, "client", client.RemoteAddr().String())
		return
	}
	defer b.Release()
	b.Succeed()
	c := &tcpConn{client: client, backend: conn, b: b, rt: rt}
	c.cio.init(client)
	c.bio.init(conn)
	if !t.track(c) {
		conn.Close()
		return
	}
	defer t.untrack(c)
	t.met.opened(rt.stats)
	defer t.met.closed(rt.stats)
	if len(hello) > 0 {
		if _, err := conn.Write(hello); err != nil {
			c.close()
			return
		}
		t.met.bytes(rt.stats, true, len(hello))
	}
	c.pipe(t)
}

func (t *TCPProxy) untrack(c *tcpConn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	c.setDraining(false, t)
}

// tcpConn is a proxied connection: the client's and the instance's sides.
type tcpConn struct {
	client, backend net.Conn
	cio, bio        sockIO // the client's and the instance's sides, read and written
	b               *lb.Backend
	rt              *tcpRoute
	last            atomic.Int64 // unix nanoseconds of the last byte either way
	ending          atomic.Bool  // the instance is done: the client's side is being stopped
	closeOnce       sync.Once
	drainMu         sync.Mutex
	drain           *time.Timer // set while the instance is out of the pool and a drain timeout applies
	draining        bool
}

// close ends both sides and reports whether this call did it.
func (c *tcpConn) close() bool {
	did := false
	c.closeOnce.Do(func() {
		did = true
		c.cio.close()
		c.bio.close()
	})
	return did
}

// setDraining starts (or, when the instance is back, stops) the drain of a
// connection whose instance left the route's pool: the connection is left
// alone until it closes or the route's drain timeout ends it.
func (c *tcpConn) setDraining(on bool, t *TCPProxy) {
	c.drainMu.Lock()
	defer c.drainMu.Unlock()
	if on == c.draining {
		return
	}
	c.draining = on
	if !on {
		if c.drain != nil {
			c.drain.Stop()
			c.drain = nil
		}
		return
	}
	t.p.log.Info("tcp route: instance left the pool; draining its connection", "service", c.rt.Service, "addr", c.b.Addr(), "drain_timeout", c.rt.drain)
	if c.rt.drain > 0 {
		c.drain = time.AfterFunc(c.rt.drain, func() {
			if c.close() {
				t.met.drained(c.rt.stats)
			}
		})
	}
}

// pipe copies both ways until the instance is done, or the client is done
// and then the instance, or the connection is idle too long. Half-closes
// are passed on: a client that shuts its side still reads the answer.
func (c *tcpConn) pipe(t *TCPProxy) {
	c.last.Store(time.Now().UnixNano())
	client, backend := &c.cio, &c.bio
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.copy(backend, client, t, true)
		backend.closeWrite()
	}()
	c.copy(client, backend, t, false)
	select {
	case <-done:
		// The client finished first: the close sends its FIN, and a
		// shutdown call of its own would only cost a syscall.
	default:
		// The instance is done: nothing more will reach the client, and
		// what the client still sends has nowhere to go.
		client.closeWrite()
		c.ending.Store(true)
		c.client.SetReadDeadline(time.Now())
		<-done
	}
	c.close()
}

// copyBufs holds the 32 KiB buffers that TCP routes and HTTP/2 bodies copy
// through; one pool, so a front door doing both keeps one set warm.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copy moves bytes from src to dst until EOF, an error, or both directions
// are idle for the route's idle timeout. Deadlines move at most once per
// eighth of the timeout, so a busy connection does not touch its timers on
// every read.
func (c *tcpConn) copy(dst, src *sockIO, t *TCPProxy, in bool) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	idle := int64(c.rt.idle)
	var dl int64
	for {
		now := time.Now().UnixNano()
		if dl-now < idle-idle/8 {
			dl = now + idle
			src.c.SetReadDeadline(time.Unix(0, dl))
			dst.c.SetWriteDeadline(time.Unix(0, dl))
		}
		n, err := src.Read(buf)
		if n > 0 {
			c.last.Store(time.Now().UnixNano())
			w, werr := dst.Write(buf[:n])
			t.met.bytes(c.rt.stats, in, w)
			if werr != nil {
				c.close()
				return
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// The other direction may have been busy all along.
				if since := time.Now().UnixNano() - c.last.Load(); since < idle && !c.ending.Load() {
					dl = 0
					continue
				}
				if c.ending.Load() {
					return
				}
				if c.close() {
					t.met.idled(c.rt.stats)
				}
				return
			}
			if !errors.Is(err, io.EOF) {
				c.close()
			}
			return
		}
	}
}
