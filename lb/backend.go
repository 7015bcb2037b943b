package lb

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Backend is one instance address (host:port). It is created when the
// address first appears in a pool and kept, with its keep-alive connections
// and counters, for as long as any pool holds it, across every rebuild.
type Backend struct {
	addr   string
	cfg    *Config              // the balancer's, frozen: for clients made later
	client *fasthttp.HostClient // plain HTTP

	tlsClients atomic.Pointer[[]*tlsClient] // one per set of TLS settings routes use; copy on write
	tlsMu      sync.Mutex                   // serializes adding to tlsClients

	inflight  atomic.Int64  // requests (and tunnels) in progress
	requests  atomic.Uint64 // requests picked, ever
	downUntil atomic.Int64  // unix nanoseconds until which the backend is ejected; 0: never ejected

	mu          sync.Mutex // guards the failure window; taken only when a request fails
	fails       int
	windowStart int64
}

// DialError is an error connecting to a backend: nothing of the request was
// sent, so it can be retried on another backend whatever its method.
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string { return "lb: connecting to " + e.Addr + ": " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

func newBackend(addr string, cfg *Config) *Backend {
	b := &Backend{addr: addr, cfg: cfg}
	b.client = b.newClient(nil)
	return b
}

// newClient makes a client for the backend, speaking TLS when conf is set.
// The handshake is done in Dial rather than by fasthttp (IsTLS), so that
// its failure is a DialError like a refused connection, and the request
// keeps its http scheme whichever way it goes.
func (b *Backend) newClient(conf *tls.Config) *fasthttp.HostClient {
	cfg := b.cfg
	return &fasthttp.HostClient{
		Addr: b.addr,
		Dial: func(addr string) (net.Conn, error) {
			return dial(addr, cfg, conf, true)
		},
		MaxConns:                      cfg.MaxConnsPerBackend,
		MaxConnWaitTimeout:            cfg.MaxConnWait,
		MaxIdleConnDuration:           cfg.IdleConnTimeout,
		MaxIdemponentCallAttempts:     2, // one more try on a fresh connection when a kept-alive one was closed under us
		RetryIfErr:                    retryStaleConn,
		ReadBufferSize:                cfg.MaxResponseHeaderSize,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		StreamResponseBody:            true,
		ConnPoolStrategy:              fasthttp.LIFO, // the most recently used connection is the warmest
	}
}

// retryStaleConn lets the HostClient try an idempotent request once more
// when the backend closed the connection before answering: the usual cause
// is a keep-alive connection the backend closed while it sat in our pool.
// Every other retry is the proxy's, on another backend.
func retryStaleConn(req *fasthttp.Request, _ int, err error) (bool, bool) {
	if !Idempotent(req.Header.Method()) || req.IsBodyStream() {
		return false, false
	}
	return false, errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF)
}

// Addr is the backend's host:port.
func (b *Backend) Addr() string { return b.addr }

// Client is the backend's HTTP client; every request to the address uses
// it, so keep-alive connections are shared by every route to it.
func (b *Backend) Client() *fasthttp.HostClient { return b.client }

// InFlight is the number of requests in progress on the backend.
func (b *Backend) InFlight() int64 { return b.inflight.Load() }

// Requests is the number of requests the backend was picked for.
func (b *Backend) Requests() uint64 { return b.requests.Load() }

// Acquire counts a request that did not come through Pick (a test, or a
// caller that chose the backend itself). Every Acquire or Pick is paired
// with one Release.
func (b *Backend) Acquire() {
	b.inflight.Add(1)
	b.requests.Add(1)
}

// Release ends a request started by Pick or Acquire.
func (b *Backend) Release() { b.inflight.Add(-1) }

// Down reports whether passive health checking has taken the backend out of
// rotation at now (unix nanoseconds).
func (b *Backend) Down(now int64) bool { return b.downUntil.Load() > now }

// DownUntil returns when the backend comes back, zero if it is not out.
func (b *Backend) DownUntil() time.Time {
	if d := b.downUntil.Load(); d > time.Now().UnixNano() {
		return time.Unix(0, d)
	}
	return time.Time{}
}

// Fail records a failed request as nginx's max_fails/fail_timeout do: after
// maxFails failures within failTimeout, the backend is out of rotation for
// failTimeout, then tried again. maxFails <= 0 turns this off. It reports
// whether this failure ejected the backend.
func (b *Backend) Fail(maxFails int, failTimeout time.Duration) bool {
	if maxFails <= 0 || failTimeout <= 0 {
		return false
	}
	now := time.Now().UnixNano()
	b.mu.Lock()
	defer b.mu.Unlock()
	if now-b.windowStart > int64(failTimeout) {
		b.windowStart, b.fails = now, 0
	}
	b.fails++
	if b.fails < maxFails {
		return false
	}
	b.fails, b.windowStart = 0, now
	b.downUntil.Store(now + int64(failTimeout))
	return true
}

// Succeed records a good answer: a backend that came back and answers is
// again fully in rotation, with its failure count cleared.
func (b *Backend) Succeed() {
	if b.downUntil.Load() == 0 {
		return // the common case: never failed, nothing to clear
	}
	b.mu.Lock()
	b.fails = 0
	b.downUntil.Store(0)
	b.mu.Unlock()
}

// idleConn puts a fresh deadline on reads and writes, so a timeout bounds
// the wait for the next byte (as nginx's proxy_read_timeout does) rather
// than the whole exchange, and a long streamed body is not cut off. A
// deadline is moved only once an eighth of the timeout has passed since it
// was last set: the bound is then between 7/8 and all of the timeout, and a
// busy connection does not touch its timer on every call.
type idleConn struct {
	net.Conn
	read, write     time.Duration
	readDL, writeDL int64 // unix nanoseconds of the deadlines last set
}

func (c *idleConn) Read(p []byte) (int, error) {
	if c.read > 0 {
		if now := time.Now().UnixNano(); c.readDL-now < int64(c.read)-int64(c.read)/8 {
			c.readDL = now + int64(c.read)
			c.Conn.SetReadDeadline(time.Unix(0, c.readDL))
		}
	}
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	if c.write > 0 {
		if now := time.Now().UnixNano(); c.writeDL-now < int64(c.write)-int64(c.write)/8 {
			c.writeDL = now + int64(c.write)
			c.Conn.SetWriteDeadline(time.Unix(0, c.writeDL))
		}
	}
	return c.Conn.Write(p)
}

// Idempotent reports whether a request with this method may be sent twice
// (RFC 9110 9.2.2).
func Idempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE":
		return true
	}
	return false
}
