package proxy

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// serveHTTP hands the stream to serveH2 (gRPC, gRPC-Web, extended
// CONNECT) as net/http's server would: a net/http request, whose context
// ends when the client resets the stream, and a response writer.
func (s *leanStream) serveHTTP() {
	c := s.c
	h := make(http.Header, 8)
	for k, v := range s.ctx.Request.Header.All() {
		key := string(k)
		h[key] = append(h[key], string(v))
	}
	if s.protocol != "" {
		h[":protocol"] = []string{s.protocol}
	}
	host := s.authority
	if host == "" {
		host = s.host
	}
	req := &http.Request{Method: s.method, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, Host: host,
		RemoteAddr: c.raddr.String(), RequestURI: s.path, TLS: c.tls, ContentLength: s.clen}
	var err error
	switch {
	case s.method == "CONNECT" && s.protocol == "":
		req.URL, req.RequestURI = &url.URL{Host: host}, host
	case s.method == "CONNECT":
		req.URL, err = url.ParseRequestURI(s.path)
		if req.URL != nil {
			req.URL.Scheme, req.URL.Host = s.scheme, host
		}
	default:
		req.URL, err = url.ParseRequestURI(s.path)
	}
	w := &leanRW{s: s, h: http.Header{}}
	if err != nil {
		w.h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte("pier: bad request path\n"))
		w.finish()
		return
	}
	if s.clen >= 0 {
		h["Content-Length"] = []string{strconv.FormatInt(s.clen, 10)}
	}
	var body *leanHTTPBody
	if !s.hasBody {
		req.Body, req.ContentLength = http.NoBody, 0
	} else {
		body = &leanHTTPBody{b: &s.body}
		body.idle.L = &body.mu
		req.Body = body
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	if s.closed {
		cancel() // reset before it started
	}
	s.cancel = cancel
	c.mu.Unlock()
	c.p.serveH2(w, req.WithContext(ctx))
	w.finish()
	cancel()
	if body != nil {
		body.detach()
	}
}

// leanHTTPBody is the request body a net/http handler reads. The handler
// may leave a goroutine reading it after it returns (an HTTP/2 transport's
// request writer, until it sees the answer): detach ends such reads and
// waits for them, so that the stream can be reused.
type leanHTTPBody struct {
	mu      sync.Mutex
	idle    sync.Cond // signalled when the last read in progress returns
	b       *leanBody // nil once detached
	reading int
}

func (h *leanHTTPBody) Read(p []byte) (int, error) {
	h.mu.Lock()
	b := h.b
	if b == nil {
		h.mu.Unlock()
		return 0, errLeanClosed
	}
	h.reading++
	h.mu.Unlock()
	n, err := b.Read(p)
	h.mu.Lock()
	if h.reading--; h.reading == 0 {
		h.idle.Broadcast()
	}
	h.mu.Unlock()
	return n, err
}

func (h *leanHTTPBody) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.b != nil {
		h.b.Close()
	}
	return nil
}

func (h *leanHTTPBody) detach() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.b == nil {
		return
	}
	h.b.end(errLeanClosed)
	for h.reading > 0 {
		h.idle.Wait()
	}
	h.b = nil
}

// leanRW is the http.ResponseWriter of serveHTTP. As net/http's, it sends
// the header at the first Write or Flush, or with the end of the stream,
// and the trailers net/http's way (http.TrailerPrefix, or declared in
// Trailer) at the end.
type leanRW struct {
	s    *leanStream
	h    http.Header
	code int
	sent bool
	err  error
}

func (w *leanRW) Header() http.Header { return w.h }

func (w *leanRW) WriteHeader(code int) {
	if code < 200 || w.code != 0 {
		return // 1xx are not sent on
	}
	w.code = code
}

// Write and the header go out from a goroutine of the connection's, as
// under Go's server: a gRPC answer is a header, messages and trailers
// written in quick succession, which then share a write; the end of the
// stream (finish) is flushed by the stream's goroutine.
func (w *leanRW) Write(b []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	w.Flush()
	if w.err != nil {
		return 0, w.err
	}
	c := w.s.c
	c.wmu.Lock()
	w.err = c.writeDataLocked(w.s, b, false)
	c.unlockAsync()
	if w.err != nil {
		return 0, w.err
	}
	return len(b), nil
}

func (w *leanRW) Flush() {
	if !w.sent {
		w.sendHeader(false)
	}
}

func (w *leanRW) sendHeader(end bool) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.sent = true
	c := w.s.c
	c.wmu.Lock()
	b := c.blockStart()
	b = hpackStatus(b, w.code)
	for k, vs := range w.h {
		if k == "Trailer" || strings.HasPrefix(k, http.TrailerPrefix) || h2Skip([]byte(k)) || k == "Upgrade" || k == "Proxy-Connection" {
			continue
		}
		for _, v := range vs {
			b = hpackField(b, k, v)
		}
	}
	w.err = c.writeBlockLocked(w.s, b, end)
	c.unlockAsync()
}

// finish ends the stream after the handler returned.
func (w *leanRW) finish() {
	var trailers http.Header
	for k, vs := range w.h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			if trailers == nil {
				trailers = http.Header{}
			}
			trailers[http.CanonicalHeaderKey(name)] = vs
		}
	}
	for _, v := range w.h["Trailer"] {
		for _, name := range strings.Split(v, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			if vs, ok := w.h[name]; ok && name != "" {
				if trailers == nil {
					trailers = http.Header{}
				}
				trailers[name] = vs
			}
		}
	}
	if !w.sent {
		w.sendHeader(len(trailers) == 0 || w.code == 0)
	}
	if w.err != nil {
		return
	}
	c := w.s.c
	c.wmu.Lock()
	defer c.unlockFlush()
	if w.s.ended {
		return
	}
	if len(trailers) == 0 {
		c.writeDataLocked(w.s, nil, true)
		return
	}
	b := c.blockStart()
	for k, vs := range trailers {
		for _, v := range vs {
			b = hpackField(b, k, v)
		}
	}
	c.writeBlockLocked(w.s, b, true)
}

// hpackStatus appends :status, indexed for the codes the static table has.
func hpackStatus(dst []byte, code int) []byte {
	switch code {
	case 200:
		return append(dst, 0x88)
	case 204:
		return append(dst, 0x89)
	case 206:
		return append(dst, 0x8a)
	case 304:
		return append(dst, 0x8b)
	case 400:
		return append(dst, 0x8c)
	case 404:
		return append(dst, 0x8d)
	case 500:
		return append(dst, 0x8e)
	}
	if code < 100 || code > 999 {
		code = 500
	}
	dst = append(dst, 0x08, 3) // literal without indexing, name :status (static index 8)
	return append(dst, byte('0'+code/100), byte('0'+code/10%10), byte('0'+code%10))
}

// hpackNames is the static table's index of the response fields most
// answers carry (RFC 7541 appendix A).
var hpackNames = map[string]uint64{
	"cache-control": 24, "content-encoding": 26, "content-length": 28, "content-type": 31,
	"date": 33, "etag": 34, "last-modified": 44, "location": 46, "server": 54, "set-cookie": 55, "vary": 59,
}

// hpackField appends a field as a literal without indexing (RFC 7541
// 6.2.2): the encoder keeps no dynamic table, so that the connection's
// encoding needs no state beyond the order of the blocks, and nothing is
// copied to be kept. The name is written in lower case.
func hpackField[S string | []byte](dst []byte, name, value S) []byte {
	var lower [32]byte
	var ln []byte
	if len(name) <= len(lower) {
		ln = lower[:len(name)]
		for i := 0; i < len(name); i++ {
			c := name[i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			ln[i] = c
		}
		if idx, ok := hpackNames[string(ln)]; ok {
			dst = hpackInt(dst, 0x00, 4, idx)
			return hpackString(dst, value)
		}
	}
	dst = append(dst, 0x00)
	dst = hpackInt(dst, 0, 7, uint64(len(name)))
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return hpackString(dst, value)
}

func hpackString[S string | []byte](dst []byte, s S) []byte {
	dst = hpackInt(dst, 0, 7, uint64(len(s)))
	return append(dst, s...)
}

// hpackInt appends v with an n-bit prefix after the bits of first (RFC 7541 5.1).
func hpackInt(dst []byte, first byte, n uint, v uint64) []byte {
	k := uint64(1<<n - 1)
	if v < k {
		return append(dst, first|byte(v))
	}
	dst = append(dst, first|byte(k))
	v -= k
	for v >= 128 {
		dst = append(dst, byte(0x80|v&0x7f))
		v >>= 7
	}
	return append(dst, byte(v))
}
