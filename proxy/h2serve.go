package proxy

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// serveH2 handles one HTTP/2 stream. A gRPC route gets the stream as it
// is (grpc.go); every other request takes the HTTP/1.1 path, serve, through
// a fasthttp request built from the stream, so that routing, the pools,
// retries, passive health, headers, metrics and the access log are one
// code for both protocols. Instances are reached over HTTP/1.1 either way.
func (p *Proxy) serveH2(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	growStack(0)
	path, _, _ := cutQuery(req.RequestURI)
	if len(path) > 0 && path[0] == '/' && !hasDotSegment([]byte(path)) {
		r := p.routes.Load().lookup([]byte(req.Host), []byte(path))
		if r == nil {
			r = p.catchUp().lookup([]byte(req.Host), []byte(path))
		}
		switch {
		case r != nil && isExtendedConnect(req):
			p.tunnelH2(w, req, r, start)
			return
		case r != nil && r.Proto == ProtoGRPC:
			if web, _, _ := grpcWebType(req.Header.Get("Content-Type")); web {
				p.serveGRPCWeb(w, req, r, start)
				return
			}
			p.serveGRPC(w, req, r, start)
			return
		case isGRPC(req):
			// Sent on over HTTP/1.1 it would reach an instance that cannot
			// answer it; a gRPC client understands this answer.
			msg := "pier: no route for " + path
			if r != nil {
				msg = "pier: the route for " + r.Host + r.Path + " is not a gRPC route (proto: grpc)"
			}
			p.grpcFail(w, req, r, start, nil, 0, grpcUnimplemented, msg)
			return
		}
	}
	st := h2StreamPool.Get().(*h2Stream)
	defer h2StreamPool.Put(st)
	ctx := &st.ctx
	ctx.Init2(st.conn(req), fasthttpLogger{p.log}, false)
	fr := &ctx.Request
	fr.Header.DisableNormalizing() // h2 names arrive in lower case; instances must accept any case
	fr.Header.SetMethod(req.Method)
	fr.Header.SetRequestURI(req.RequestURI)
	fr.Header.SetHost(req.Host)
	for k, vs := range req.Header {
		for _, v := range vs {
			fr.Header.Add(k, v)
		}
	}
	if req.Body != nil && req.Body != http.NoBody {
		n := int(req.ContentLength) // -1: unknown, sent chunked
		// Not an io.Closer: fasthttp closes a stream it replaces, and serve
		// replaces this one with its limiting reader.
		fr.SetBodyStream(struct{ io.Reader }{req.Body}, n)
	}
	p.serve(ctx)
	p.writeH2(w, ctx, st)
	ctx.Request.ResetUserValues() // ends the request on its backend
	ctx.Request.Reset()
	ctx.Response.Reset()
}

// h2StackSize is about the stack a stream's handler goroutine reaches in
// serve and in the HTTP/1.1 client below it.
const h2StackSize = 8 << 10

// growStack makes the goroutine's stack as large as a request needs now,
// while it holds only a few frames: net/http starts a goroutine per stream
// with a small stack, and letting it grow on demand copies it (deep by
// then) several times per request, 5-8% of the CPU of a proxied stream.
//
//go:noinline
func growStack(i int) byte {
	var b [h2StackSize]byte
	return b[i]
}

// smallBody is the largest body of known length written without flushing.
const smallBody = 32 << 10

// h2Stream is what serveH2 needs for a stream besides net/http's
// request, pooled: the fasthttp request, the stand-in connection with the
// client's address, and room for the answer's header values.
type h2Stream struct {
	ctx   fasthttp.RequestCtx
	c     h2TLSConn
	addr  net.TCPAddr
	ip    [16]byte
	bytes []byte
}

var h2StreamPool = sync.Pool{New: func() any { return new(h2Stream) }}

// conn returns the stream's stand-in connection for req, valid until st
// goes back to the pool.
func (st *h2Stream) conn(req *http.Request) net.Conn {
	st.addr = net.TCPAddr{}
	if ap, err := netip.ParseAddrPort(req.RemoteAddr); err == nil {
		a := ap.Addr().Unmap()
		if a.Is4() {
			ip4 := a.As4()
			st.addr.IP = st.ip[:copy(st.ip[:], ip4[:])]
		} else {
			ip16 := a.As16()
			st.addr.IP = st.ip[:copy(st.ip[:], ip16[:])]
		}
		st.addr.Port = int(ap.Port())
	}
	st.c = h2TLSConn{h2Conn: h2Conn{raddr: &st.addr}, state: req.TLS}
	if req.TLS != nil {
		return &st.c
	}
	return &st.c.h2Conn
}

// writeH2 sends serve's answer on the stream, the body streamed as the
// instance sends it.
func (p *Proxy) writeH2(w http.ResponseWriter, ctx *fasthttp.RequestCtx, st *h2Stream) {
	resp := &ctx.Response
	h := w.Header()
	bs := resp.BodyStream()
	clen := -1 // the Content-Length to send, if any
	switch n := resp.Header.ContentLength(); {
	case (bs != nil || ctx.IsHead()) && n >= 0:
		clen = n // the instance's
	case bs == nil && !ctx.IsHead():
		clen = len(resp.Body()) // whole, or pier's own answer, not yet in the header
	}
	// The values go into http.Header as substrings of one string, each in
	// a slice of one backing array: two allocations for the answer's
	// fields rather than three each.
	b, n := st.bytes[:0], 0
	for k, v := range resp.Header.All() {
		if !h2Skip(k) {
			b = append(b, v...)
			n++
		}
	}
	clenAt := len(b)
	if clen >= 0 {
		b = strconv.AppendInt(b, int64(clen), 10)
		n++
	}
	all := string(b)
	st.bytes = b
	vals := make([]string, n)
	i, off := 0, 0
	for k, v := range resp.Header.All() {
		if h2Skip(k) {
			continue
		}
		vals[i] = all[off : off+len(v)]
		off += len(v)
		key := h2Key(k)
		if prev, ok := h[key]; ok {
			h[key] = append(prev, vals[i])
		} else {
			h[key] = vals[i : i+1 : i+1]
		}
		i++
	}
	if clen >= 0 {
		vals[i] = all[clenAt:]
		h["Content-Length"] = vals[i : i+1 : i+1]
	}
	w.WriteHeader(resp.StatusCode())
	if n := resp.Header.ContentLength(); bs != nil && n >= 0 && n <= smallBody {
		// A small body of known length goes out with the end of the
		// stream, in one write, rather than one flush per read.
		buf := copyBufs.Get().(*[]byte)
		for {
			n, err := bs.Read(*buf)
			if n > 0 {
				if _, werr := w.Write((*buf)[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		copyBufs.Put(buf)
		resp.CloseBodyStream()
		return
	}
	if bs != nil {
		copyFlushing(w, bs)
		resp.CloseBodyStream()
		return
	}
	w.Write(resp.Body())
}

// h2Skip reports the fields of an HTTP/1.1 answer that HTTP/2 has no use for.
func h2Skip(k []byte) bool {
	switch string(k) {
	case "Content-Length", "Connection", "Transfer-Encoding", "Keep-Alive":
		return true
	}
	return false
}

// h2Key returns the http.Header key of a field name from fasthttp (which
// writes them in canonical form), without allocating for the common ones.
func h2Key(k []byte) string {
	switch string(k) {
	case "Content-Type":
		return "Content-Type"
	case "Date":
		return "Date"
	case "Server":
		return "Server"
	case "Cache-Control":
		return "Cache-Control"
	case "Etag":
		return "Etag"
	case "Last-Modified":
		return "Last-Modified"
	case "Vary":
		return "Vary"
	case "Content-Encoding":
		return "Content-Encoding"
	case "Set-Cookie":
		return "Set-Cookie"
	case "Location":
		return "Location"
	case "X-Request-Id":
		return "X-Request-Id"
	}
	return http.CanonicalHeaderKey(string(k))
}

// copyFlushing copies src to the stream, flushing after each read so that
// a slow or endless body (server-sent events) reaches the client as it comes.
func copyFlushing(w http.ResponseWriter, src io.Reader) error {
	fl, _ := w.(http.Flusher)
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	for {
		n, err := src.Read(*buf)
		if n > 0 {
			if _, werr := w.Write((*buf)[:n]); werr != nil {
				return werr
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func cutQuery(uri string) (path, query string, ok bool) {
	for i := 0; i < len(uri); i++ {
		if uri[i] == '?' {
			return uri[:i], uri[i:], true
		}
	}
	return uri, "", false
}

// h2Conn stands for an HTTP/2 stream's connection in a fasthttp request:
// its addresses, and whether it is TLS. It is never read or written.
type h2Conn struct {
	net.Conn // nil
	raddr    net.Addr
}

func (c *h2Conn) RemoteAddr() net.Addr { return c.raddr }
func (c *h2Conn) LocalAddr() net.Addr  { return &net.TCPAddr{} }
func (c *h2Conn) Close() error         { return nil }
func (c *h2Conn) h2() bool             { return true }

// h2TLSConn is an h2Conn that came over TLS: fasthttp's IsTLS looks for
// these methods.
type h2TLSConn struct {
	h2Conn
	state *tls.ConnectionState
}

func (c *h2TLSConn) Handshake() error                     { return nil }
func (c *h2TLSConn) ConnectionState() tls.ConnectionState { return *c.state }

// isH2 reports whether ctx is a request serveH2 built.
func isH2(ctx *fasthttp.RequestCtx) bool {
	_, ok := ctx.Conn().(interface{ h2() bool })
	return ok
}
