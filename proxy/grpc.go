package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/lb"
	"golang.org/x/net/http2"
)

// ProtoGRPC is Route.Proto for a gRPC route: its requests reach the
// instances over HTTP/2 as they came, trailers and streams both ways.
const ProtoGRPC = "grpc"

// gRPC status codes pier answers itself.
const (
	grpcCancelled         = 1
	grpcDeadlineExceeded  = 4
	grpcResourceExhausted = 8
	grpcInternal          = 13
	grpcUnavailable       = 14
	grpcUnimplemented     = 12
)

// grpcReplayLimit bounds the request body kept to send again on another
// instance: a unary call's message fits; a long stream is not retried.
const grpcReplayLimit = 64 << 10

// grpcIdleConn closes an HTTP/2 connection to an instance unused this long.
const grpcIdleConn = 90 * time.Second

// isGRPC reports whether req is a gRPC call (its content type says so).
func isGRPC(req *http.Request) bool {
	ct := req.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") && (len(ct) == 16 || ct[16] == '+' || ct[16] == ';')
}

// grpcUpstream holds the HTTP/2 transports to gRPC instances: one for h2c,
// one per set of upstream TLS settings. A transport keeps one connection
// per instance address, multiplexing every call to it. They are
// golang.org/x/net/http2's, used directly: net/http's Transport in front
// of the same code adds its own connection lookup and contexts to every
// call (about 7% of the CPU of a relayed unary call).
type grpcUpstream struct {
	connect time.Duration
	mu      sync.Mutex
	byTLS   map[*lb.TLS]*http2.Transport // nil key: h2c
}

func newGRPCUpstream(connect time.Duration) *grpcUpstream {
	return &grpcUpstream{connect: connect, byTLS: map[*lb.TLS]*http2.Transport{}}
}

func (u *grpcUpstream) transport(t *lb.TLS) *http2.Transport {
	u.mu.Lock()
	defer u.mu.Unlock()
	if tr := u.byTLS[t]; tr != nil {
		return tr
	}
	dialer := &net.Dialer{Timeout: u.connect}
	tr := &http2.Transport{
		AllowHTTP:       t == nil,
		IdleConnTimeout: grpcIdleConn,
		// A connection whose instance vanished (a host gone, no RST) is
		// found by pings rather than by a call hanging on it.
		ReadIdleTimeout: 15 * time.Second,
		PingTimeout:     5 * time.Second,
		// Header fields are sent literally, none added to HPACK's dynamic
		// table: every call has its own X-Request-Id, and with a table each
		// one would push out an older entry (6% of a call's CPU), for a
		// compression that loopback and the LAN have little use for.
		MaxEncoderHeaderTableSize: 1,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &lb.DialError{Addr: addr, Err: err}
			}
			c = newBatchConn(c, true)
			if t == nil {
				return c, nil // h2c: the transport calls every dial a TLS dial
			}
			name := t.ServerName
			if name == "" {
				name, _, _ = net.SplitHostPort(addr)
			}
			tc := tls.Client(c, &tls.Config{ServerName: name, InsecureSkipVerify: t.SkipVerify, RootCAs: t.RootCAs,
				MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
			hctx, cancel := context.WithTimeout(ctx, u.connect)
			defer cancel()
			if err := tc.HandshakeContext(hctx); err != nil {
				c.Close()
				return nil, &lb.DialError{Addr: addr, Err: err}
			}
			return tc, nil
		},
	}
	u.byTLS[t] = tr
	return tr
}

func (u *grpcUpstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, tr := range u.byTLS {
		tr.CloseIdleConnections()
	}
}

// serveGRPC relays one gRPC call on route r to an instance. A call is
// sent to another instance only when the one tried cannot have seen it (it
// could not be reached, or it refused the stream), or when it answered
// UNAVAILABLE before any message and the method is one the route says is
// idempotent; either way only when the request body sent so far is still
// held (grpcReplayLimit).
func (p *Proxy) serveGRPC(w http.ResponseWriter, req *http.Request, r *route, start time.Time) {
	pool := p.pool(r)
	if pool.Len() == 0 {
		p.catchUp()
		pool = p.pool(r)
	}
	if pool.Len() == 0 {
		p.grpcFail(w, req, r, start, nil, 0, grpcUnavailable, "pier: no healthy instance of service \""+r.Service+"\"")
		return
	}
	ctx := req.Context()
	if v := req.Header.Get("Grpc-Timeout"); v != "" {
		d, ok := parseGRPCTimeout(v)
		if !ok {
			p.grpcFail(w, req, r, start, nil, 0, grpcInternal, "pier: malformed grpc-timeout "+strconv.Quote(v))
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	path, query, _ := cutQuery(req.RequestURI)
	target := string(r.rewrite(make([]byte, 0, len(path)+len(r.prepend)), []byte(path))) + query
	scheme := "http://"
	if r.tls != nil {
		scheme = "https://"
	}
	hdr := grpcRequestHeader(req)
	var limit *grpcBodyLimit
	var src io.Reader = req.Body
	if max := p.cfg.MaxBodySize; max > 0 && req.Body != nil && req.Body != http.NoBody {
		if req.ContentLength > max {
			p.grpcFail(w, req, r, start, nil, 0, grpcResourceExhausted, grpcTooLarge(max))
			return
		}
		limit = &grpcBodyLimit{r: req.Body, n: max}
		src = limit
	}
	body := &replayBody{src: src}
	idempotent := r.grpcIdempotent(path)
	tr := p.grpc.transport(r.tls)

	var tried [maxTries]*lb.Backend
	var b *lb.Backend
	var resp *http.Response
	var err error
	n := 0
	for n < p.cfg.Tries {
		if n > 0 && p.cfg.TryTimeout > 0 && time.Since(start) > p.cfg.TryTimeout {
			break
		}
		if b = pool.Pick(tried[:n]); b == nil {
			break
		}
		tried[n] = b
		n++
		out, rerr := http.NewRequestWithContext(ctx, req.Method, scheme+b.Addr()+target, nil)
		if rerr != nil {
			b.Release()
			p.grpcFail(w, req, r, start, b, n, grpcInternal, "pier: "+rerr.Error())
			return
		}
		out.Host = req.Host
		out.Header = hdr
		if dl, ok := ctx.Deadline(); ok {
			// What is left of the client's deadline, for the instance.
			hdr.Set("Grpc-Timeout", formatGRPCTimeout(time.Until(dl)))
		}
		if req.Body != nil && req.Body != http.NoBody {
			out.Body = body.attempt()
			out.GetBody = func() (io.ReadCloser, error) { return body.replay() }
			out.ContentLength = req.ContentLength
		}
		resp, err = tr.RoundTrip(out)
		if err != nil {
			b.Release()
			var de *lb.DialError
			dial := errors.As(err, &de)
			// A failed connect, or the connection breaking, counts against
			// the instance; the call's end (its deadline, the client gone)
			// and a stream the instance reset itself do not.
			// A TLS mismatch is the route's settings, not the instance
			// (see tlsMismatch).
			failed := dial || (ctx.Err() == nil && !pastDeadline(ctx) && !strings.Contains(err.Error(), "stream error") && !limit.exceeded())
			if tlsMismatch(err) {
				failed = false
				p.warnTLS(r, b, err)
			}
			if failed && b.Fail(r.maxFails, r.failTimeout) {
				p.met.ejected(r)
				p.log.Warn("backend out of rotation after failures", "service", r.Service, "addr", b.Addr(), "fail_timeout", r.failTimeout, "err", err)
			}
			p.log.Debug("gRPC call to backend failed", "service", r.Service, "addr", b.Addr(), "try", n, "err", err)
			if ctx.Err() == nil && (dial || refusedStream(err)) && body.replayable() && !limit.exceeded() {
				continue
			}
			break
		}
		if resp.Header.Get("Grpc-Status") == "14" && idempotent && body.replayable() && n < p.cfg.Tries {
			// UNAVAILABLE and nothing else (trailers only): the call may
			// go elsewhere.
			resp.Body.Close()
			b.Succeed() // the instance answered: its own health is its checks' business
			b.Release()
			resp = nil
			continue
		}
		break
	}
	if resp == nil {
		switch {
		case limit.exceeded():
			p.grpcFail(w, req, r, start, b, n, grpcResourceExhausted, grpcTooLarge(p.cfg.MaxBodySize))
		case pastDeadline(ctx):
			p.grpcFail(w, req, r, start, b, n, grpcDeadlineExceeded, "pier: deadline exceeded")
		case ctx.Err() != nil:
			p.grpcFail(w, req, r, start, b, n, grpcCancelled, "pier: the call was cancelled")
		default:
			p.grpcFail(w, req, r, start, b, n, grpcUnavailable, "pier: service \""+r.Service+"\" is unavailable")
		}
		return
	}
	defer b.Release()
	b.Succeed()
	h := w.Header()
	for k, vs := range resp.Header {
		if isHopByHop(k) {
			continue
		}
		h[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	if st := resp.Header.Get("Grpc-Status"); st != "" {
		// Trailers only (an error status, typically): sent on as one
		// HEADERS frame that ends the stream, as gRPC wants it.
		resp.Body.Close()
		p.grpcDone(req, r, start, b, n, resp.StatusCode, st)
		return
	}
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush() // the response headers now: a stream may wait long for its first message
	}
	cerr := copyFlushing(w, resp.Body)
	resp.Body.Close()
	status := resp.Trailer.Get("Grpc-Status")
	for k, vs := range resp.Trailer {
		h[http.TrailerPrefix+k] = vs
	}
	if limit.exceeded() && (status == "" || status == "1") {
		// The stream to the instance was cut at max_body_size: whatever
		// the instance said of it (CANCELLED, or nothing), the client
		// hears why.
		status = ""
		h.Del(http.TrailerPrefix + "Grpc-Message")
	}
	if status == "" && (isGRPC(req) || cerr != nil) {
		// The instance's stream ended without a status: a reset, the
		// deadline, the instance gone, or the request cut at max_body_size.
		// (A request that is not a call, a CORS preflight, needs none.)
		code, msg := grpcUnavailable, "pier: the stream from the instance broke"
		switch {
		case limit.exceeded():
			code, msg = grpcResourceExhausted, grpcTooLarge(p.cfg.MaxBodySize)
		case pastDeadline(ctx):
			code, msg = grpcDeadlineExceeded, "pier: deadline exceeded"
		}
		if cerr != nil {
			p.log.Debug("gRPC stream broke", "service", r.Service, "addr", b.Addr(), "err", cerr)
		}
		status = strconv.Itoa(code)
		h.Set(http.TrailerPrefix+"Grpc-Status", status)
		h.Set(http.TrailerPrefix+"Grpc-Message", msg)
	}
	p.grpcDone(req, r, start, b, n, resp.StatusCode, status)
}

// grpcBodyLimit passes on at most n bytes of a call's request stream
// (max_body_size, for the whole stream as for an HTTP/1.1 body) and fails
// the read that would go past them, so the instance never gets more: the
// transport resets its stream and the client is answered
// RESOURCE_EXHAUSTED, the status grpc-go's own servers give a message
// over their receive limit.
type grpcBodyLimit struct {
	r   io.Reader
	n   int64 // bytes still allowed
	hit atomic.Bool
}

func (l *grpcBodyLimit) Read(p []byte) (int, error) {
	if l.hit.Load() {
		return 0, errBodyLimit
	}
	// One byte more than allowed tells a stream that ends at the limit
	// from one that goes past it; that byte is not passed on.
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	if int64(n) > l.n {
		n = int(l.n)
		l.hit.Store(true)
		err = errBodyLimit
	}
	l.n -= int64(n)
	return n, err
}

// exceeded reports whether the client sent more than allowed; false on a
// nil limit.
func (l *grpcBodyLimit) exceeded() bool { return l != nil && l.hit.Load() }

func grpcTooLarge(max int64) string {
	return "pier: the request stream is larger than max_body_size (" + strconv.FormatInt(max, 10) + " bytes)"
}

// pastDeadline reports whether ctx's deadline has passed by the clock,
// not by ctx.Err(), which its timer sets a little later on a busy
// machine: an instance whose own deadline ended the call (grpc-go resets
// the stream with CANCEL) is then answered DEADLINE_EXCEEDED, as the
// client's own deadline would have it.
func pastDeadline(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// grpcRequestHeader is the header sent to the instance: the client's,
// without hop-by-hop fields, with the forwarding fields pier adds to every
// request and te: trailers, which gRPC servers require.
func grpcRequestHeader(req *http.Request) http.Header {
	h := make(http.Header, len(req.Header)+6)
	for k, vs := range req.Header {
		if !isHopByHop(k) {
			h[k] = vs
		}
	}
	ip := ""
	if ap, err := netip.ParseAddrPort(req.RemoteAddr); err == nil {
		ip = ap.Addr().Unmap().String()
	}
	xff := ip
	if prior := h.Get("X-Forwarded-For"); prior != "" {
		xff = prior + ", " + ip
	}
	proto := "http"
	if req.TLS != nil {
		proto = "https"
	}
	// One slice for the values set here, rather than one each.
	vals := [...]string{"trailers", xff, ip, proto, req.Host, ""}
	set := func(i int, k string) { h[k] = vals[i : i+1 : i+1] }
	set(0, "Te")
	set(1, "X-Forwarded-For")
	set(2, "X-Real-Ip")
	set(3, "X-Forwarded-Proto")
	set(4, "X-Forwarded-Host")
	if h.Get("X-Request-Id") == "" {
		var id [32]byte
		vals[5] = string(requestID(&id))
		set(5, "X-Request-Id")
	}
	return h
}

func isHopByHop(k string) bool {
	for _, hk := range hopByHop {
		if strings.EqualFold(k, hk) {
			return true
		}
	}
	return false
}

// refusedStream reports whether the HTTP/2 transport says the instance did
// not process the stream (REFUSED_STREAM, or a GOAWAY below its id) and
// could not send it again itself.
func refusedStream(err error) bool {
	s := err.Error()
	return strings.Contains(s, "REFUSED_STREAM") || strings.Contains(s, "graceful shutdown GOAWAY") || strings.Contains(s, "client conn not usable")
}

// grpcIdempotent reports whether the route lists the method (its path, or
// its service's prefix ending in /) as safe to call twice.
func (r *route) grpcIdempotent(path string) bool {
	for m := range strings.SplitSeq(r.GRPCIdempotent, ",") {
		if path == m || (strings.HasSuffix(m, "/") && strings.HasPrefix(path, m)) {
			return true
		}
	}
	return false
}

// grpcFail answers a call with a gRPC error in trailers-only form: HTTP 200
// whose headers carry the status, as gRPC clients expect in place of an
// HTTP error.
func (p *Proxy) grpcFail(w http.ResponseWriter, req *http.Request, r *route, start time.Time, b *lb.Backend, tries, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(code))
	h.Set("Grpc-Message", grpcPercentEncode(msg))
	w.WriteHeader(http.StatusOK)
	p.grpcDone(req, r, start, b, tries, http.StatusOK, strconv.Itoa(code))
}

// grpcDone records a finished call in the metrics and the access log.
func (p *Proxy) grpcDone(req *http.Request, r *route, start time.Time, b *lb.Backend, tries, code int, status string) {
	if p.met != nil {
		p.met.done(r, code, start, tries)
		p.met.grpcDone(r, status)
	}
	if p.alog != nil {
		svc := ""
		if r != nil {
			svc = r.Service
		}
		if status == "" {
			status = "none"
		}
		p.alog.writeH2(req, code, time.Now(), start, svc, b, tries, status)
	}
}

// grpcPercentEncode encodes a grpc-message as gRPC's HTTP/2 mapping says:
// bytes outside printable ASCII, and %, as %XX.
func grpcPercentEncode(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < ' ' || c > '~' || c == '%' {
			sb.WriteByte('%')
			sb.WriteByte("0123456789ABCDEF"[c>>4])
			sb.WriteByte("0123456789ABCDEF"[c&15])
			continue
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// replayBody is a call's request body, read once from the client and kept
// (up to grpcReplayLimit) so that an attempt on another instance can send
// it again. Reads of the client's body are serialized by readMu but not
// under mu: an abandoned attempt may still be blocked in one (waiting for
// the client's next message), and what it gets is kept for the next.
type replayBody struct {
	src    io.Reader
	readMu sync.Mutex // one read of src at a time

	mu       sync.Mutex
	buf      []byte
	overflow bool // bytes were read that buf does not hold
	err      error
	cur      *attemptBody // the attempt bytes are for
}

var errSuperseded = errors.New("pier: the attempt was given up")

// attempt returns the body for a new attempt: what was read so far, then
// the rest of the client's body. An earlier attempt's reader stops working.
func (rb *replayBody) attempt() *attemptBody {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	a := &attemptBody{rb: rb}
	rb.cur = a
	return a
}

func (rb *replayBody) replay() (io.ReadCloser, error) {
	if !rb.replayable() {
		return nil, errors.New("pier: the request body was sent and is no longer held")
	}
	return rb.attempt(), nil
}

func (rb *replayBody) replayable() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return !rb.overflow
}

type attemptBody struct {
	rb  *replayBody
	pos int
}

func (a *attemptBody) Read(p []byte) (int, error) {
	rb := a.rb
	for {
		if n, err, done := a.fromBuf(p); done {
			return n, err
		}
		rb.readMu.Lock()
		rb.mu.Lock()
		ready := a.pos < len(rb.buf) || rb.err != nil || rb.cur != a
		rb.mu.Unlock()
		if ready { // another reader got bytes meanwhile
			rb.readMu.Unlock()
			continue
		}
		n, err := rb.src.Read(p)
		rb.mu.Lock()
		mine := rb.cur == a
		switch {
		case n == 0:
		case !rb.overflow && len(rb.buf)+n <= grpcReplayLimit:
			rb.buf = append(rb.buf, p[:n]...)
			if mine {
				a.pos += n
			}
		default:
			// Too much to hold: from now on the current attempt reads
			// straight from the client, and there is no other.
			rb.overflow, rb.buf = true, nil
			a.pos = 0
		}
		if err != nil {
			rb.err = err
		}
		rb.mu.Unlock()
		rb.readMu.Unlock()
		if !mine {
			return 0, errSuperseded
		}
		return n, err
	}
}

// fromBuf serves a read from what is held; done is false when the
// caller must read the client's body.
func (a *attemptBody) fromBuf(p []byte) (int, error, bool) {
	rb := a.rb
	rb.mu.Lock()
	defer rb.mu.Unlock()
	switch {
	case rb.cur != a:
		return 0, errSuperseded, true
	case a.pos < len(rb.buf):
		n := copy(p, rb.buf[a.pos:])
		a.pos += n
		return n, nil, true
	case rb.err != nil:
		return 0, rb.err, true
	}
	return 0, nil, false
}

func (a *attemptBody) Close() error { return nil }

// validateGRPC checks a route's gRPC fields.
func (r *Route) validateGRPC() error {
	switch r.Proto {
	case "", "http", ProtoGRPC:
	default:
		return fmt.Errorf("route %s%s: proto %q: want http or grpc", r.Host, r.Path, r.Proto)
	}
	if r.GRPCIdempotent == "" {
		return nil
	}
	if r.Proto != ProtoGRPC {
		return fmt.Errorf("route %s%s: grpc_idempotent needs proto: grpc", r.Host, r.Path)
	}
	for m := range strings.SplitSeq(r.GRPCIdempotent, ",") {
		if len(m) < 2 || m[0] != '/' || strings.ContainsAny(m, " ?#") {
			return fmt.Errorf("route %s%s: grpc_idempotent %q: want a method's path, /package.Service/Method, or a service's, /package.Service/", r.Host, r.Path, m)
		}
	}
	return nil
}
