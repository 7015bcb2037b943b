package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// gRPC-Web (application/grpc-web, +proto, and the base64 -text forms) is
// translated to gRPC at the front door, as Envoy's grpc_web filter does:
// the call reaches the instance as application/grpc over HTTP/2, and its
// trailers come back at the end of the body as a frame whose flag byte is
// 0x80. CORS is not answered here: a preflight goes to the route like any
// request.

// grpcWebType returns whether ct is a gRPC-Web content type, whether it is
// the base64 text form, and what follows the type (+proto, ;charset=...).
func grpcWebType(ct string) (web, text bool, rest string) {
	const bin, txt = "application/grpc-web", "application/grpc-web-text"
	switch {
	case len(ct) >= len(txt) && strings.EqualFold(ct[:len(txt)], txt):
		text, rest = true, ct[len(txt):]
	case len(ct) >= len(bin) && strings.EqualFold(ct[:len(bin)], bin):
		rest = ct[len(bin):]
	default:
		return false, false, ""
	}
	if rest != "" && rest[0] != '+' && rest[0] != ';' {
		return false, false, ""
	}
	return true, text, rest
}

// serveGRPCWeb relays one gRPC-Web call on a gRPC route.
func (p *Proxy) serveGRPCWeb(w http.ResponseWriter, req *http.Request, r *route, start time.Time) {
	_, text, rest := grpcWebType(req.Header.Get("Content-Type"))
	out := req.Clone(req.Context())
	out.Header.Set("Content-Type", "application/grpc"+rest)
	out.Header.Del("Content-Length")
	if text {
		out.Body = io.NopCloser(&base64Reader{r: req.Body})
		out.ContentLength = -1
	}
	ct := "application/grpc-web"
	if text {
		ct = "application/grpc-web-text"
	}
	ww := &grpcWebWriter{w: w, h: http.Header{}, text: text, ct: ct + rest}
	p.serveGRPC(ww, out, r, start)
	ww.finish()
}

// grpcWebWriter turns serveGRPC's gRPC answer into gRPC-Web: the content
// type, the body (base64 for -text) and the trailers as the body's last
// frame. A trailers-only answer (an error, typically) stays in the
// headers, which gRPC-Web allows.
type grpcWebWriter struct {
	w        http.ResponseWriter
	h        http.Header // what serveGRPC writes, trailers included
	text     bool
	ct       string
	wrote    bool
	inHeader bool   // grpc-status came in the headers
	carry    []byte // -text: bytes not yet encoded (fewer than 3)
}

func (g *grpcWebWriter) Header() http.Header { return g.h }

func (g *grpcWebWriter) WriteHeader(code int) {
	if g.wrote {
		return
	}
	g.wrote = true
	dst := g.w.Header()
	for k, vs := range g.h {
		if strings.HasPrefix(k, http.TrailerPrefix) || k == "Trailer" {
			continue
		}
		dst[k] = vs
	}
	dst.Set("Content-Type", g.ct)
	g.inHeader = g.h.Get("Grpc-Status") != ""
	g.w.WriteHeader(code)
}

func (g *grpcWebWriter) Write(b []byte) (int, error) {
	if !g.wrote {
		g.WriteHeader(http.StatusOK)
	}
	if !g.text {
		return g.w.Write(b)
	}
	n := len(b)
	if len(g.carry) > 0 {
		k := min(3-len(g.carry), len(b))
		g.carry = append(g.carry, b[:k]...)
		b = b[k:]
		if len(g.carry) < 3 {
			return n, nil
		}
		if _, err := io.WriteString(g.w, base64.StdEncoding.EncodeToString(g.carry)); err != nil {
			return 0, err
		}
		g.carry = g.carry[:0]
	}
	whole := len(b) / 3 * 3
	if whole > 0 {
		if _, err := io.WriteString(g.w, base64.StdEncoding.EncodeToString(b[:whole])); err != nil {
			return 0, err
		}
	}
	g.carry = append(g.carry, b[whole:]...)
	return n, nil
}

func (g *grpcWebWriter) Flush() {
	if f, ok := g.w.(http.Flusher); ok {
		f.Flush()
	}
}

// finish writes the trailer frame (unless the status went in the headers)
// and what -text still holds.
func (g *grpcWebWriter) finish() {
	if !g.wrote {
		g.WriteHeader(http.StatusOK)
	}
	if !g.inHeader {
		var keys []string
		for k := range g.h {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		var tb bytes.Buffer
		for _, k := range keys {
			name := strings.ToLower(strings.TrimPrefix(k, http.TrailerPrefix))
			for _, v := range g.h[k] {
				tb.WriteString(name + ": " + v + "\r\n")
			}
		}
		frame := make([]byte, 5, 5+tb.Len())
		frame[0] = 0x80
		binary.BigEndian.PutUint32(frame[1:], uint32(tb.Len()))
		g.Write(append(frame, tb.Bytes()...))
	}
	if g.text && len(g.carry) > 0 {
		io.WriteString(g.w, base64.StdEncoding.EncodeToString(g.carry))
		g.carry = nil
	}
	g.Flush()
}

// base64Reader decodes a grpc-web-text request body: base64 in groups of
// four characters, which a client may send as several padded pieces.
type base64Reader struct {
	r    io.Reader
	in   [4]byte
	nin  int
	out  []byte
	err  error
	obuf [3]byte
}

func (b *base64Reader) Read(p []byte) (int, error) {
	for len(b.out) == 0 {
		if b.err != nil {
			if b.err == io.EOF && b.nin != 0 {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, b.err
		}
		var buf [512]byte
		n, err := b.r.Read(buf[:])
		if err != nil {
			b.err = err
		}
		for _, ch := range buf[:n] {
			if ch == '\r' || ch == '\n' {
				continue
			}
			b.in[b.nin] = ch
			b.nin++
			if b.nin == 4 {
				m, derr := base64.StdEncoding.Decode(b.obuf[:], b.in[:])
				if derr != nil {
					b.err = derr
					break
				}
				b.out = append(b.out, b.obuf[:m]...)
				b.nin = 0
			}
		}
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	return n, nil
}

// serveGRPCFromH1 serves the requests that may reach a gRPC route over
// HTTP/1.1: gRPC-Web calls, and CORS preflights (OPTIONS with
// Access-Control-Request-Method), which go to the instance as they are.
// It reports false for any other request (answered 505 by the caller).
// The request body is read whole first (gRPC-Web over HTTP/1.1 has no
// client streaming), up to max_body_size or 4 MiB, gRPC's default
// message limit; the answer is streamed.
func (p *Proxy) serveGRPCFromH1(ctx *fasthttp.RequestCtx, r *route, start time.Time) bool {
	req := &ctx.Request
	web, _, _ := grpcWebType(string(req.Header.ContentType()))
	preflight := string(req.Header.Method()) == http.MethodOptions && len(req.Header.Peek("Access-Control-Request-Method")) > 0
	if !web && !preflight {
		return false
	}
	limit := p.cfg.MaxBodySize
	if limit <= 0 {
		limit = 4 << 20
	}
	var body []byte
	if bs := req.BodyStream(); bs != nil {
		var err error
		if body, err = io.ReadAll(io.LimitReader(bs, limit+1)); err != nil {
			ctx.Error("pier: bad request body\n", fasthttp.StatusBadRequest)
			ctx.SetConnectionClose()
			return true
		}
	} else {
		body = append([]byte(nil), req.Body()...)
	}
	uri := string(req.Header.RequestURI())
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		ctx.Error("pier: bad request target\n", fasthttp.StatusBadRequest)
		return true
	}
	cctx, cancel := context.WithCancel(context.Background())
	hreq := (&http.Request{Method: string(req.Header.Method()), URL: u, RequestURI: uri, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Host: string(req.Header.Host()), Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
		RemoteAddr: ctx.RemoteAddr().String()}).WithContext(cctx)
	if ctx.IsTLS() {
		hreq.TLS = ctx.TLSConnectionState()
	}
	for k, v := range req.Header.All() {
		switch string(k) {
		case "Host", "Content-Length", "Transfer-Encoding":
			continue
		}
		hreq.Header.Add(string(k), string(v))
	}
	if int64(len(body)) > limit {
		hreq.Body, hreq.ContentLength = http.NoBody, 0
	}
	hw := newH1Writer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer hw.close()
		switch {
		case int64(len(body)) > limit:
			ww := &grpcWebWriter{w: hw, h: http.Header{}, ct: "application/grpc-web"}
			p.grpcFail(ww, hreq, r, start, nil, 0, grpcResourceExhausted, grpcTooLarge(limit))
			ww.finish()
		case web:
			p.serveGRPCWeb(hw, hreq, r, start)
		default:
			p.serveGRPC(hw, hreq, r, start)
		}
	}()
	<-hw.ready
	if hw.code == 0 {
		<-done
		cancel()
		ctx.Error("pier: service \""+r.Service+"\" is unavailable\n", fasthttp.StatusBadGateway)
		return true
	}
	ctx.SetStatusCode(hw.code)
	for k, vs := range hw.header {
		if isHopByHop(k) || k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			ctx.Response.Header.Add(k, v)
		}
	}
	ctx.SetBodyStreamWriter(func(bw *bufio.Writer) {
		defer func() { cancel(); <-done }()
		buf := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(buf)
		for {
			n, err := hw.pr.Read(*buf)
			if n > 0 {
				if _, werr := bw.Write((*buf)[:n]); werr != nil || bw.Flush() != nil {
					hw.pr.CloseWithError(io.ErrClosedPipe) // the client is gone: the call ends
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	return true
}

// h1Writer is an http.ResponseWriter whose header is handed over once
// written and whose body goes through a pipe to fasthttp's body writer:
// each Write waits until that writer took it, so the answer streams.
type h1Writer struct {
	h      http.Header
	header http.Header // a copy taken at WriteHeader
	code   int
	ready  chan struct{}
	pr     *io.PipeReader
	pw     *io.PipeWriter
	wrote  bool
}

func newH1Writer() *h1Writer {
	pr, pw := io.Pipe()
	return &h1Writer{h: http.Header{}, ready: make(chan struct{}), pr: pr, pw: pw}
}

func (w *h1Writer) Header() http.Header { return w.h }

func (w *h1Writer) WriteHeader(code int) {
	if w.wrote {
		return
	}
	w.wrote = true
	w.code = code
	w.header = w.h.Clone()
	close(w.ready)
}

func (w *h1Writer) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.pw.Write(b)
}

func (w *h1Writer) Flush() {}

func (w *h1Writer) close() {
	if !w.wrote {
		w.wrote = true
		close(w.ready)
	}
	w.pw.Close()
}
