package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/pier-dev/pier/lb"
)

// Config configures a Proxy. It is frozen after New.
type Config struct {
	Balancer *lb.Balancer `json:"-"`    // required: the pools
	Routes   []Route      `json:"-"`    // routes from the config file (the agent adds up several files' routes)
	Tags     bool         `json:"tags"` // also route by urlprefix- service tags
	Logger   *slog.Logger `json:"-"`    // nil: discard

	Registerer prometheus.Registerer `json:"-"` // nil: no metrics

	MaxFails    int           `json:"max_fails"`    // failures within FailTimeout that take a backend out (0: never)
	FailTimeout time.Duration `json:"fail_timeout"` // the window for MaxFails, and how long a backend stays out
	Tries       int           `json:"tries"`        // attempts of one request, on different backends
	TryTimeout  time.Duration `json:"try_timeout"`  // no new attempt starts this long after the request arrived (0: no limit)

	MaxHeaderSize int           `json:"max_header_size"` // bytes of request line and headers (431 above it)
	MaxBodySize   int64         `json:"max_body_size"`   // bytes of a request body (413 above it); 0: no limit
	HeaderTimeout time.Duration `json:"header_timeout"`  // reading a request's headers (against slowloris)
	BodyTimeout   time.Duration `json:"body_timeout"`    // reading a request's whole body
	WriteTimeout  time.Duration `json:"client_timeout"`  // writing a whole response to the client (0: no limit)
	IdleTimeout   time.Duration `json:"idle_timeout"`    // a client's idle keep-alive connection
	MaxConns      int           `json:"max_conns"`       // client connections served at once
	AccessLog     string        `json:"-"`               // "combined", "json", or "off" (the default, also ""); the file's access_log also takes a boolean
	AccessLogTo   io.Writer     `json:"-"`               // where access log lines go; nil: standard error
	TLS           *TLSConfig    `json:"-"`               // certificates for RunTLS and the HTTP redirect; nil: no TLS

	// Failover is where routes with a failover find other datacenters'
	// instances (failover.go); nil: such routes serve locally only.
	Failover      FailoverSource `json:"-"`
	FailoverEvery time.Duration  `json:"-"`     // how often the routes and the datacenters' order are read again (the instances come by blocking queries); default 1s
	FailoverWait  time.Duration  `json:"-"`     // the wait of a blocking query for another datacenter's instances; default 10s (it bounds how long a WAN cut holds one)
	HTTP2         HTTP2Config    `json:"http2"` // HTTP/2 to clients (h2.go)
	H2C           bool           `json:"h2c"`   // the plain listener also takes HTTP/2 with prior knowledge

	// Engine serves the plain listener's HTTP/1.1 connections:
	// EngineEventLoop (the default on Linux, also "") or EngineGoroutines
	// (engine.go).
	Engine string `json:"engine"`
	// Loops is how many event loops serve them (evloop_loops_linux.go);
	// 0: one per core the Go runtime uses (GOMAXPROCS).
	Loops int `json:"loops"`
}

// DefaultConfig returns the proxy's defaults; Balancer must still be set.
func DefaultConfig() Config {
	return Config{
		Tags:          true,
		MaxFails:      1,                // nginx's max_fails
		FailTimeout:   10 * time.Second, // nginx's fail_timeout
		Tries:         3,
		TryTimeout:    10 * time.Second,
		MaxHeaderSize: 8 << 10,          // nginx's large_client_header_buffers 8k
		HeaderTimeout: 10 * time.Second, // a client that cannot send its headers in 10s is not a browser
		BodyTimeout:   time.Hour,        // bounds a trickled upload; large ones still fit
		IdleTimeout:   75 * time.Second, // nginx's keepalive_timeout
		MaxConns:      10000,
		HTTP2:         defaultHTTP2(),
	}
}

const maxTries = 16

// Proxy is the front door.
type Proxy struct {
	cfg        Config
	bal        *lb.Balancer
	log        *slog.Logger
	routes     atomic.Pointer[routeTable]
	mu         sync.Mutex        // serializes route rebuilds
	kvWarned   map[string]uint64 // bad KV routes already logged; guarded by mu
	acmeWarned map[string]bool   // hosts of tls=acme routes logged for want of proxy.tls.acme; guarded by mu
	tlsc       tlsCache          // routes' upstream TLS settings, interned; guarded by mu
	certWarn   certWarning       // when a TLS mismatch with an instance was last logged
	srv        *fasthttp.Server
	loops      *loopGroup    // nil: the goroutine engine serves the plain listener
	met        *proxyMetrics // nil: no metrics
	alog       *accessLog    // nil: no access log
	certs      *certStore    // nil: no TLS
	acme       *acmeManager  // nil: no ACME (acme.go)
	redirect   bool          // plain requests get a redirect to https
	h2         *h2Front      // nil: no HTTP/2 on either listener
	grpc       *grpcUpstream // transports to gRPC instances

	tunnelsMu sync.Mutex
	tunnels   map[net.Conn]struct{} // backend side of open WebSocket tunnels
	closing   bool

	bodies sync.Pool // *clientBody, reused by requests with a body

	fo *failover // nil without Config.Failover
}

// New validates cfg and builds the first route table.
func New(cfg Config) (*Proxy, error) {
	if cfg.Balancer == nil {
		return nil, errors.New("proxy: a balancer is required")
	}
	def := DefaultConfig()
	switch {
	case cfg.Tries < 0 || cfg.Tries > maxTries:
		return nil, fmt.Errorf("proxy: tries %d: want 1-%d", cfg.Tries, maxTries)
	case cfg.MaxFails < 0 || cfg.FailTimeout < 0 || cfg.TryTimeout < 0 || cfg.MaxBodySize < 0 ||
		cfg.HeaderTimeout < 0 || cfg.BodyTimeout < 0 || cfg.WriteTimeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxConns < 0 || cfg.Loops < 0:
		return nil, errors.New("proxy: limits and timeouts must not be negative")
	}
	if cfg.Tries == 0 {
		cfg.Tries = def.Tries
	}
	if cfg.FailTimeout == 0 {
		cfg.FailTimeout = def.FailTimeout
	}
	if cfg.MaxHeaderSize <= 0 {
		cfg.MaxHeaderSize = def.MaxHeaderSize
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = def.HeaderTimeout
	}
	if cfg.BodyTimeout == 0 {
		cfg.BodyTimeout = def.BodyTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = def.IdleTimeout
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = def.MaxConns
	}
	for i := range cfg.Routes {
		if err := cfg.Routes[i].Validate(); err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
	}
	if err := ValidateEngine(cfg.Engine); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if cfg.Engine == "" {
		cfg.Engine = defaultEngine()
	}
	p := &Proxy{cfg: cfg, bal: cfg.Balancer, log: cfg.Logger, tunnels: map[net.Conn]struct{}{}, kvWarned: map[string]uint64{}, tlsc: tlsCache{}}
	if cfg.Failover != nil {
		p.fo = newFailover(cfg.Failover, cmp.Or(cfg.FailoverEvery, time.Second), cmp.Or(cfg.FailoverWait, 10*time.Second), cfg.Balancer)
	}
	p.bodies.New = func() any { return new(clientBody) }
	for i := range cfg.Routes {
		// Read the CA bundles now: a config route that cannot be served as
		// written is an error at start, not a route silently missing.
		r := &cfg.Routes[i]
		if _, err := p.tlsc.upstream(r); err != nil {
			return nil, fmt.Errorf("proxy: route %s%s: %w", r.Host, r.Path, err)
		}
	}
	if p.log == nil {
		p.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	alogTo := cfg.AccessLogTo
	if alogTo == nil {
		alogTo = os.Stderr
	}
	var err error
	if p.alog, err = newAccessLog(cfg.AccessLog, alogTo); err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		t := *cfg.TLS // frozen: the caller's value may change after New
		t.Certs = append([]CertFiles(nil), t.Certs...)
		p.cfg.TLS = &t
		if p.certs, err = newCertStore(p.cfg.TLS, p.log); err != nil {
			return nil, err
		}
		if t.ACME != nil {
			if p.acme, err = newACMEManager(t.ACME, cfg.Registerer, p.log); err != nil {
				return nil, err
			}
			p.certs.acme = p.acme
		}
		p.redirect = cfg.TLS.RedirectHTTP
	}
	if (cfg.HTTP2.Enabled && cfg.TLS != nil) || cfg.H2C {
		if err := p.cfg.HTTP2.fill(); err != nil {
			return nil, err
		}
		p.h2 = p.newH2Front()
	}
	p.grpc = newGRPCUpstream(cfg.Balancer.ConnectTimeout())
	if p.met, err = newMetrics(cfg.Registerer, func() int32 {
		return p.h1Open() + int32(p.h2.openConns()) + int32(p.loops.openConns())
	}); err != nil {
		return nil, fmt.Errorf("proxy: metrics: %w", err)
	}
	p.syncRoutes()
	p.srv = p.newServer()
	if cfg.Engine == EngineEventLoop {
		n := cfg.Loops
		if n == 0 {
			n = runtime.GOMAXPROCS(0)
		}
		if p.loops, err = newLoopGroup(p, p.newServer(), n); err != nil {
			return nil, fmt.Errorf("proxy: %w", err)
		}
	}
	return p, nil
}

// newServer returns a fasthttp server for the front door's HTTP/1.1
// connections, serving p.serve with the configured limits.
func (p *Proxy) newServer() *fasthttp.Server {
	maxBody := p.cfg.MaxBodySize
	if maxBody <= 0 || maxBody > 1<<62 {
		maxBody = 1 << 62
	}
	return &fasthttp.Server{
		Handler:                       p.serve,
		Name:                          "pier",
		Concurrency:                   p.cfg.MaxConns,
		ReadBufferSize:                p.cfg.MaxHeaderSize,
		ReadTimeout:                   p.cfg.HeaderTimeout,
		WriteTimeout:                  p.cfg.WriteTimeout,
		IdleTimeout:                   p.cfg.IdleTimeout,
		MaxRequestBodySize:            int(maxBody),
		StreamRequestBody:             true,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		NoDefaultDate:                 true,
		DisablePreParseMultipartForm:  true,
		DisableHeaderNamesNormalizing: false,
		CloseOnShutdown:               true,
		Logger:                        fasthttpLogger{p.log},
		HeaderReceived: func(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
			cl := h.ContentLength()
			if cl == 0 {
				return fasthttp.RequestConfig{} // no body to wait for: keep the header deadline
			}
			if p.cfg.MaxBodySize > 0 && int64(cl) > p.cfg.MaxBodySize {
				// serve refuses it with 413 unread; fasthttp would otherwise
				// wait for the first 8 KiB of the body before calling it.
				return fasthttp.RequestConfig{MaxRequestBodySize: 1}
			}
			return fasthttp.RequestConfig{ReadTimeout: p.cfg.BodyTimeout}
		},
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			var se interface{ Timeout() bool }
			switch {
			case errors.As(err, &se) && se.Timeout():
				ctx.Error("pier: request timeout\n", fasthttp.StatusRequestTimeout)
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				ctx.Error("pier: request body too large\n", fasthttp.StatusRequestEntityTooLarge)
			case isHeaderTooLarge(err):
				ctx.Error("pier: request header too large\n", fasthttp.StatusRequestHeaderFieldsTooLarge)
			default:
				ctx.Error("pier: bad request\n", fasthttp.StatusBadRequest)
			}
		},
	}
}

// Run serves on ln and keeps the routes in step with the catalog's tags
// until ctx ends; then it stops accepting, lets requests in progress finish
// for a few seconds and closes WebSocket tunnels.
func (p *Proxy) Run(ctx context.Context, ln net.Listener) error {
	errc := make(chan error, 1)
	h1 := ln
	if p.cfg.H2C {
		split := p.newSplitListener(ln, p.classifyH2C)
		defer split.close()
		h1 = split.h1
	}
	if p.loops != nil {
		go func() { errc <- p.loops.serve(h1) }()
	} else {
		go func() { errc <- p.srv.Serve(h1) }()
	}
	h2done := p.h2.start()
	defer p.grpc.close()
	actx, stopLog := context.WithCancel(context.Background())
	logDone := make(chan struct{})
	go func() { p.alog.run(actx); close(logDone) }()
	defer func() { stopLog(); <-logDone }() // after shutdown: the last requests' lines are flushed
	for {
		t := p.syncRoutes()
		select {
		case err := <-errc:
			return fmt.Errorf("proxy: %w", err)
		case <-ctx.Done():
			p.closeTunnels()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			h2stopped := make(chan struct{})
			go func() { p.h2.shutdown(sctx); close(h2stopped) }() // GOAWAY; streams drain alongside HTTP/1.1's requests
			loopStopped := make(chan struct{})
			if p.loops != nil {
				ln.Close() // with h2c, the split listener's accept returns
				p.loops.stopAccept()
				<-errc
				errc <- nil // for the receive below
				go func() { p.loops.shutdown(sctx); close(loopStopped) }()
			} else {
				close(loopStopped)
			}
			err := p.srv.ShutdownWithContext(sctx) // the goroutine engine's (and RunTLS's) connections
			<-loopStopped
			<-h2stopped
			<-h2done
			cancel()
			// Shutdown only closes listeners Serve has taken up; if ctx ended
			// before Serve started, closing ours is what makes it return.
			ln.Close()
			<-errc
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("proxy: shutdown: %w", err)
			}
			return nil
		case <-t.lbt.Changed():
		}
	}
}

// syncRoutes rebuilds the routes if the balancer's table moved on, and
// returns the current route table.
func (p *Proxy) syncRoutes() *routeTable {
	lbt := p.bal.Table()
	if rt := p.routes.Load(); rt != nil && rt.lbt == lbt {
		return rt
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	lbt = p.bal.Table()
	rt := p.routes.Load()
	if rt == nil || rt.lbt != lbt {
		rt = buildRoutesTLS(p.cfg.Routes, lbt, p.cfg.Tags, p.cfg.MaxFails, p.cfg.FailTimeout, p.log, p.kvWarned, p.tlsc)
		p.met.attach(rt)
		p.routes.Store(rt)
		p.acmeRouteNames(rt)
	}
	return rt
}

// h1Open is the number of client connections p.srv serves. fasthttp
// counts a listener it serves as one and takes it off again: with the
// event-loop engine and no RunTLS, p.srv serves none and reports -1.
func (p *Proxy) h1Open() int32 {
	return max(p.srv.GetOpenConnectionsCount(), 0)
}

// catchUp makes the balancer and the routes reflect the newest catalog
// before a 404 or 502 is answered: a registration is routable as soon as
// the API call that made it returns, without waiting for Run to wake up.
func (p *Proxy) catchUp() *routeTable {
	p.bal.Rebuild()
	return p.syncRoutes()
}

func (p *Proxy) closeTunnels() {
	p.tunnelsMu.Lock()
	defer p.tunnelsMu.Unlock()
	p.closing = true
	for c := range p.tunnels {
		c.Close()
	}
}

func (p *Proxy) addTunnel(c net.Conn) bool {
	p.tunnelsMu.Lock()
	defer p.tunnelsMu.Unlock()
	if p.closing {
		return false
	}
	p.tunnels[c] = struct{}{}
	return true
}

func (p *Proxy) removeTunnel(c net.Conn) {
	p.tunnelsMu.Lock()
	delete(p.tunnels, c)
	p.tunnelsMu.Unlock()
}

// reqState is what the first half of serving a request (begin) found,
// for the second (the attempts).
type reqState struct {
	start   time.Time
	origURI *logEntry
	r       *route
	pool    *lb.Pool
}

// What begin left to do.
const (
	reqDone    = iota // answered, or taken over (a tunnel, gRPC-Web, h2c)
	reqForward        // the request is ready to go to st.pool
	reqSlow           // (fast only) the request needs the blocking path: nothing was answered
)

// serve handles one request.
func (p *Proxy) serve(ctx *fasthttp.RequestCtx) {
	var st reqState
	if p.begin(ctx, &st, false) != reqForward {
		return
	}
	req := &ctx.Request
	r, pool, start, origURI := st.r, st.pool, st.start, st.origURI
	var body *clientBody // the client's body: its errors, and the limit of a chunked one
	if req.IsBodyStream() {
		size := req.Header.ContentLength()
		body = p.bodies.Get().(*clientBody)
		*body = clientBody{r: req.BodyStream(), n: 1 << 62, left: int64(size)}
		if size < 0 && p.cfg.MaxBodySize > 0 {
			body.n = p.cfg.MaxBodySize // a Content-Length over it was refused above
		}
		req.SetBodyStream(body, size)
		defer p.putBody(body) // Do has read all it will of the body once it returns
	}

	resp := &ctx.Response
	var tried [maxTries]*lb.Backend
	var err error
	n := 0
	for n < p.cfg.Tries {
		if n > 0 && p.cfg.TryTimeout > 0 && time.Since(start) > p.cfg.TryTimeout {
			break
		}
		b := pool.Pick(tried[:n])
		if b == nil {
			break
		}
		tried[n] = b
		n++
		err = b.ClientFor(r.tls).Do(req, resp)
		if err == nil {
			b.Succeed()
			// The request stays in flight on b until its response has been
			// written to the client: fasthttp closes the user values of a
			// request once it is done with it, streamed body included.
			ctx.SetUserValue(releaseKey, (*releaser)(b))
			cleanResponse(&resp.Header)
			p.access(ctx, origURI, start, r, b, n)
			return
		}
		if body != nil && body.err != nil {
			// The client's body failed, not b: nothing to hold against b,
			// nothing to retry (answered below).
			b.Release()
			break
		}
		if !p.tryFailed(r, b, req, n, err) {
			break
		}
	}
	resp.Reset()
	if body != nil && body.err != nil {
		// The client's body failed, not the backend: a malformed chunk or
		// a body cut short is the client's bad request, and the connection
		// cannot go on.
		switch {
		case errors.Is(body.err, errBodyLimit):
			ctx.Error("pier: request body too large\n", fasthttp.StatusRequestEntityTooLarge)
		case isTimeout(body.err):
			ctx.Error("pier: request timeout\n", fasthttp.StatusRequestTimeout)
		default:
			ctx.Error("pier: bad request body\n", fasthttp.StatusBadRequest)
		}
		ctx.SetConnectionClose()
		p.access(ctx, origURI, start, r, nil, n)
		return
	}
	p.unavailable(ctx, &st, err, tried[:n])
}

// tryFailed ends the failed attempt n of a request on b: b's in-flight
// count, its passive health, the log. It reports whether the request may
// be tried on another backend.
func (p *Proxy) tryFailed(r *route, b *lb.Backend, req *fasthttp.Request, n int, err error) bool {
	b.Release()
	retry, failed := classify(err, req)
	if tlsMismatch(err) {
		p.warnTLS(r, b, err)
	}
	if failed && b.Fail(r.maxFails, r.failTimeout) {
		p.met.ejected(r)
		p.log.Warn("backend out of rotation after failures", "service", r.Service, "addr", b.Addr(),
			"fail_timeout", r.failTimeout, "err", err)
	}
	p.log.Debug("request to backend failed", "service", r.Service, "addr", b.Addr(), "try", n, "retry", retry, "err", err)
	return retry
}

// unavailable answers a request no backend answered: 504 when the last
// attempt timed out, else 502.
func (p *Proxy) unavailable(ctx *fasthttp.RequestCtx, st *reqState, err error, tried []*lb.Backend) {
	ctx.Response.Reset()
	if isTimeout(err) {
		ctx.Error("pier: service \""+st.r.Service+"\" timed out\n", fasthttp.StatusGatewayTimeout)
	} else {
		ctx.Error("pier: service \""+st.r.Service+"\" is unavailable\n", fasthttp.StatusBadGateway)
	}
	var last *lb.Backend
	if n := len(tried); n > 0 {
		last = tried[n-1]
	}
	p.access(ctx, st.origURI, st.start, st.r, last, len(tried))
}

// begin is the first half of serving a request: the checks, the route and
// its pool, the rewritten target and the forwarded headers. It answers
// what it can answer itself. With fast (the event loop serving a request
// whose bytes are all in), it answers reqSlow, having answered nothing,
// for a request that needs the blocking path: a gRPC route, a route with
// TLS to its instances.
func (p *Proxy) begin(ctx *fasthttp.RequestCtx, st *reqState, fast bool) int {
	var start time.Time
	if p.alog != nil || p.met != nil || p.cfg.TryTimeout > 0 {
		start = time.Now()
	}
	st.start = start
	req := &ctx.Request
	uri := req.Header.RequestURI()
	origURI := p.alog.begin(uri) // for the access log: the URI as the client sent it
	st.origURI = origURI
	if badFraming(req.Header.RawHeaders()) {
		// Nothing of it is forwarded, and the connection is closed: where
		// this request ends is exactly what is in doubt (framing.go).
		ctx.Error("pier: bad request framing\n", fasthttp.StatusBadRequest)
		ctx.SetConnectionClose()
		p.access(ctx, origURI, start, nil, nil, 0)
		return reqDone
	}
	if !absoluteForm(&req.Header) {
		ctx.Error("pier: bad request target\n", fasthttp.StatusBadRequest)
		p.access(ctx, origURI, start, nil, nil, 0)
		return reqDone
	}
	uri = req.Header.RequestURI() // now in origin form, the host in Host
	if p.acme != nil && !ctx.IsTLS() && p.acme.challenge(ctx) {
		p.access(ctx, origURI, start, nil, nil, 0)
		return reqDone
	}
	if p.redirect && !ctx.IsTLS() {
		p.redirectHTTPS(ctx)
		p.access(ctx, origURI, start, nil, nil, 0)
		return reqDone
	}
	if p.h2 != nil && p.h2.up != nil && !ctx.IsTLS() && !isH2(ctx) && p.h2cUpgrade(ctx) {
		return reqDone // the request is stream 1 of an HTTP/2 connection now (h2upgrade.go)
	}
	path, query := uri, []byte(nil)
	for i, c := range uri {
		if c == '?' {
			path, query = uri[:i], uri[i:]
			break
		}
	}
	if len(path) == 0 || path[0] != '/' || hasDotSegment(path) {
		ctx.Error("pier: bad request path\n", fasthttp.StatusBadRequest)
		p.access(ctx, origURI, start, nil, nil, 0)
		return reqDone
	}
	host := req.Header.Host()
	rt := p.routes.Load()
	r := rt.lookup(host, path)
	if r == nil {
		if rt = p.catchUp(); rt != nil {
			r = rt.lookup(host, path)
		}
		if r == nil {
			ctx.Error("pier: no route\n", fasthttp.StatusNotFound)
			p.access(ctx, origURI, start, nil, nil, 0)
			return reqDone
		}
	}
	if fast && (r.Proto == ProtoGRPC || r.tls != nil) {
		p.alog.drop(origURI)
		return reqSlow
	}
	if r.Proto == ProtoGRPC {
		if p.serveGRPCFromH1(ctx, r, start) {
			return reqDone // gRPC-Web, or a CORS preflight (grpcweb.go)
		}
		// gRPC needs HTTP/2 both ways: over HTTP/1.1 it has no trailers.
		ctx.Error("pier: route "+r.Host+r.Path+" is a gRPC route: it takes HTTP/2 only\n", fasthttp.StatusHTTPVersionNotSupported)
		p.access(ctx, origURI, start, r, nil, 0)
		return reqDone
	}
	pool := p.pool(r)
	if pool.Len() == 0 {
		if nrt := p.catchUp(); nrt != rt {
			// The route may have gone with its last instance (a tag route
			// goes when no instance carries its tag): look it up again.
			if r = nrt.lookup(host, path); r == nil {
				ctx.Error("pier: no route\n", fasthttp.StatusNotFound)
				p.access(ctx, origURI, start, nil, nil, 0)
				return reqDone
			}
			if fast && (r.Proto == ProtoGRPC || r.tls != nil) {
				p.alog.drop(origURI)
				return reqSlow
			}
		}
		if pool = p.pool(r); pool.Len() == 0 {
			p.noInstance(ctx, r)
			p.access(ctx, origURI, start, r, nil, 0)
			return reqDone
		}
	}
	if p.cfg.MaxBodySize > 0 && int64(req.Header.ContentLength()) > p.cfg.MaxBodySize {
		ctx.Error("pier: request body too large\n", fasthttp.StatusRequestEntityTooLarge)
		ctx.SetConnectionClose()
		p.access(ctx, origURI, start, r, nil, 0)
		return reqDone
	}
	st.r, st.pool = r, pool

	var ubuf [512]byte
	target := r.rewrite(ubuf[:0], path)
	target = append(target, query...)
	upgrade := isUpgrade(&req.Header)
	req.SetRequestURIBytes(target)
	if ctx.IsTLS() {
		// TLS ends here: the request goes on to the backend as plain HTTP
		// (fasthttp would otherwise parse it as https and refuse it).
		req.URI().SetScheme("http")
	}
	p.forwardHeaders(ctx, upgrade)
	if upgrade {
		p.tunnel(ctx, r, pool, start, origURI)
		return reqDone
	}
	return reqForward
}

// releaseKey is the user value that holds a request's backend until
// fasthttp is done with the request.
const releaseKey = "pier.backend"

// releaser ends a request on its backend when fasthttp resets the request.
type releaser lb.Backend

func (r *releaser) Close() error {
	(*lb.Backend)(r).Release()
	return nil
}

func (p *Proxy) noInstance(ctx *fasthttp.RequestCtx, r *route) {
	if r.Port != "" {
		ctx.Error("pier: no healthy instance of service \""+r.Service+"\" with a port named \""+r.Port+"\"\n", fasthttp.StatusBadGateway)
		return
	}
	ctx.Error("pier: no healthy instance of service \""+r.Service+"\"\n", fasthttp.StatusBadGateway)
}

// classify says whether a failed attempt may be tried on another backend
// and whether it counts against the backend's health. Nothing was sent on
// a failed connect or when no connection was free, so those are retried
// whatever the method; after a reset or a timeout the request may have
// reached the backend, so only an idempotent request whose body can be sent
// again is retried.
func classify(err error, req *fasthttp.Request) (retry, failed bool) {
	var de *lb.DialError
	switch {
	case tlsMismatch(err):
		return true, false // see tlsMismatch
	case errors.As(err, &de):
		return true, true
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		return true, false
	case errors.Is(err, errBodyLimit):
		return false, false
	}
	return lb.Idempotent(req.Header.Method()) && !req.IsBodyStream(), true
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &te) && te.Timeout()) || errors.Is(err, syscall.ETIMEDOUT)
}

func hasDotSegment(path []byte) bool {
	for i := 0; i < len(path); i++ {
		if path[i] != '/' {
			continue
		}
		rest := path[i+1:]
		if len(rest) >= 1 && rest[0] == '.' &&
			(len(rest) == 1 || rest[1] == '/' || (rest[1] == '.' && (len(rest) == 2 || rest[2] == '/'))) {
			return true
		}
	}
	return false
}

func isHeaderTooLarge(err error) bool {
	var sm *fasthttp.ErrSmallBuffer
	return errors.As(err, &sm)
}

// access records an answered request in the metrics and the access log;
// r is nil when no route matched, b when no backend answered.
func (p *Proxy) access(ctx *fasthttp.RequestCtx, uri *logEntry, start time.Time, r *route, b *lb.Backend, tries int) {
	if p.met != nil {
		p.met.done(r, ctx.Response.StatusCode(), start, tries)
	}
	if p.alog == nil {
		return
	}
	svc := ""
	if r != nil {
		svc = r.Service
	}
	p.alog.write(uri, ctx, time.Now(), start, svc, b, tries)
}

// fasthttpLogger routes fasthttp's own messages to the debug log.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "from", "fasthttp")
}
