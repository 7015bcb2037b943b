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
	ctx := h2ctxPool.Get().(*fasthttp.RequestCtx)
	defer h2ctxPool.Put(ctx)
	ctx.Init2(newH2Conn(req), fasthttpLogger{p.log}, false)
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
	p.writeH2(w, ctx)
	ctx.Request.ResetUserValues() // ends the request on its backend
	ctx.Request.Reset()
	ctx.Response.Reset()
}

// smallBody is the largest body of known length written without flushing.
const smallBody = 32 << 10

var h2ctxPool = sync.Pool{New: func() any { return new(fasthttp.RequestCtx) }}

// writeH2 sends serve's answer on the stream, the body streamed as the
// instance sends it.
func (p *Proxy) writeH2(w http.ResponseWriter, ctx *fasthttp.RequestCtx) {
	resp := &ctx.Response
	h := w.Header()
	for k, v := range resp.Header.All() {
		switch string(k) {
		case "Content-Length", "Connection", "Transfer-Encoding", "Keep-Alive":
			continue
		}
		h.Add(string(k), string(v))
	}
	bs := resp.BodyStream()
	switch n := resp.Header.ContentLength(); {
	case (bs != nil || ctx.IsHead()) && n >= 0:
		h.Set("Content-Length", strconv.Itoa(n)) // the instance's
	case bs == nil && !ctx.IsHead():
		h.Set("Content-Length", strconv.Itoa(len(resp.Body()))) // whole, or pier's own answer, not yet in the header
	}
	w.WriteHeader(resp.StatusCode())
	if n := resp.Header.ContentLength(); bs != nil && n >= 0 && n <= smallBody {
		// A small body of known length goes out with the end of the
		// stream, in one write, rather than one flush per read.
		buf := copyBufs.Get().(*[]byte)
		io.CopyBuffer(w, struct{ io.Reader }{bs}, *buf)
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

func newH2Conn(req *http.Request) net.Conn {
	var raddr net.Addr = &net.TCPAddr{}
	if ap, err := netip.ParseAddrPort(req.RemoteAddr); err == nil {
		raddr = net.TCPAddrFromAddrPort(ap)
	}
	if req.TLS != nil {
		return &h2TLSConn{h2Conn: h2Conn{raddr: raddr}, state: req.TLS}
	}
	return &h2Conn{raddr: raddr}
}

// isH2 reports whether ctx is a request serveH2 built.
func isH2(ctx *fasthttp.RequestCtx) bool {
	_, ok := ctx.Conn().(interface{ h2() bool })
	return ok
}
