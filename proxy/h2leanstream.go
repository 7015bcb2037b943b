package proxy

import (
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// The pseudo-header fields of a request (leanStream.seen).
const (
	pseudoMethod = 1 << iota
	pseudoPath
	pseudoScheme
	pseudoAuthority
	pseudoProtocol
)

// field takes one decoded field of the request's header block, and
// reports false when it makes the request malformed (RFC 9113 8.2, 8.3).
// Regular fields go straight into the fasthttp request, their names in
// the canonical form net/http would give them.
func (s *leanStream) field(name, value string, regular bool) bool {
	if len(name) > 0 && name[0] == ':' {
		if regular {
			return false
		}
		var bit uint8
		var dst *string
		switch name {
		case ":method":
			bit, dst = pseudoMethod, &s.method
		case ":path":
			bit, dst = pseudoPath, &s.path
		case ":scheme":
			bit, dst = pseudoScheme, &s.scheme
		case ":authority":
			bit, dst = pseudoAuthority, &s.authority
		case ":protocol":
			bit, dst = pseudoProtocol, &s.protocol
		default:
			return false
		}
		if s.seen&bit != 0 || !httpguts.ValidHeaderFieldValue(value) {
			return false
		}
		s.seen |= bit
		*dst = value
		return true
	}
	if !validH2Name(name) || !httpguts.ValidHeaderFieldValue(value) {
		return false
	}
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		return false // connection-specific (RFC 9113 8.2.2)
	case "te":
		if value != "trailers" {
			return false
		}
	case "host":
		if s.host != "" {
			return false
		}
		s.host = value
		return true
	case "content-length":
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil || n < 0 || (s.clen >= 0 && s.clen != n) {
			return false
		}
		s.clen = n
		return true
	case "content-type":
		s.ctype = value
	}
	s.ctx.Request.Header.Add(name, value)
	return true
}

// validH2Name reports whether name is a token in lower case.
func validH2Name(name string) bool {
	if !httpguts.ValidHeaderFieldName(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' {
			return false
		}
	}
	return true
}

// validPseudo reports whether the pseudo-header fields make a request
// (RFC 9113 8.3.1, RFC 8441 4).
func (s *leanStream) validPseudo() bool {
	switch {
	case s.seen&pseudoMethod == 0:
		return false
	case s.reqDone && s.clen > 0:
		return false
	case s.method == "CONNECT" && s.seen&pseudoProtocol == 0:
		return s.seen&(pseudoPath|pseudoScheme) == 0 && s.authority != ""
	case s.method == "CONNECT":
		return s.path != "" && s.scheme != "" && s.authority != ""
	case s.seen&pseudoProtocol != 0:
		return false
	}
	return s.path != "" && s.scheme != ""
}

// serve runs the stream's handler on a worker: the HTTP/1.1 path (serve)
// through the fasthttp request decoded into, or net/http's handlers for
// what needs them. The stream may not be used once c.done has it.
func (s *leanStream) serve() {
	defer s.c.done(s)
	s.handle()
}

// handle is serve without the stream's end (c.done).
func (s *leanStream) handle() {
	c := s.c
	if s.viaHTTP() {
		s.serveHTTP()
		return
	}
	p := c.p
	ctx := &s.ctx
	ctx.Init2(c.standIn, fasthttpLogger{p.log}, false)
	if s.hasBody {
		// Not an io.Closer: fasthttp closes a stream it replaces, and serve
		// replaces this one with its limiting reader.
		ctx.Request.SetBodyStream(leanReader{&s.body}, int(s.clen))
	}
	p.serve(ctx)
	s.writeResponse(ctx)
	ctx.Request.ResetUserValues() // ends the request on its backend
}

// viaHTTP is needsHTTP, asked once.
func (s *leanStream) viaHTTP() bool {
	if s.route == 0 {
		s.route = 1
		if s.needsHTTP() {
			s.route = 2
		}
	}
	return s.route == 2
}

// needsHTTP reports whether the stream goes to net/http's handlers
// (serveH2): extended CONNECT, gRPC and gRPC-Web. It sets the request
// line and host of the fasthttp request.
func (s *leanStream) needsHTTP() bool {
	if s.method == "CONNECT" || hasPrefix(s.ctype, "application/grpc") {
		return true
	}
	h := &s.ctx.Request.Header
	h.SetMethod(s.method)
	h.SetRequestURI(s.path)
	if s.authority != "" {
		h.SetHost(s.authority)
	} else {
		h.SetHost(s.host)
	}
	uri := h.RequestURI()
	path := uri
	for i, c := range uri {
		if c == '?' {
			path = uri[:i]
			break
		}
	}
	if len(path) == 0 || path[0] != '/' || hasDotSegment(path) {
		return false // serve answers 400
	}
	r := s.c.p.routes.Load().lookup(h.Host(), path)
	return r != nil && r.Proto == ProtoGRPC
}

func hasPrefix(s, prefix string) bool { return len(s) >= len(prefix) && s[:len(prefix)] == prefix }

// leanReader is a stream's body without its Close.
type leanReader struct{ b *leanBody }

func (r leanReader) Read(p []byte) (int, error) { return r.b.Read(p) }

// writeResponse sends serve's answer on the stream, a body of unknown or
// large size streamed as the instance sends it.
func (s *leanStream) writeResponse(ctx *fasthttp.RequestCtx) {
	c := s.c
	resp := &ctx.Response
	bs := resp.BodyStream()
	head := ctx.IsHead()
	clen := -1 // the Content-Length to send, if any
	switch n := resp.Header.ContentLength(); {
	case (bs != nil || head) && n >= 0:
		clen = n // the instance's
	case bs == nil && !head:
		clen = len(resp.Body()) // whole, or pier's own answer, not yet in the header
	}
	var body []byte
	if head && bs != nil {
		resp.CloseBodyStream() // an answer to HEAD has no body, whatever came
		bs = nil
	}
	if n := resp.Header.ContentLength(); bs != nil && n >= 0 && n <= smallBody {
		// A small body of known length goes out with the end of the
		// stream, in one write, rather than one write per read.
		if cap(s.buf) < n {
			s.buf = make([]byte, n)
		}
		m, _ := io.ReadFull(bs, s.buf[:n])
		body = s.buf[:m]
		resp.CloseBodyStream()
		bs = nil
	} else if bs == nil && !head {
		body = resp.Body()
	}
	var num [20]byte
	c.wmu.Lock()
	b := c.blockStart()
	b = hpackStatus(b, resp.StatusCode())
	for k, v := range resp.Header.All() {
		if !h2Skip(k) {
			b = hpackField(b, k, v)
		}
	}
	if clen >= 0 {
		b = hpackField(b, nameContentLength, strconv.AppendInt(num[:0], int64(clen), 10))
	}
	end := bs == nil && len(body) == 0
	err := c.writeBlockLocked(s, b, end)
	if err == nil && bs == nil && len(body) > 0 {
		err = c.writeDataLocked(s, body, true)
	}
	c.unlockFlush()
	if bs == nil || err != nil {
		if bs != nil {
			resp.CloseBodyStream()
		}
		return
	}
	buf := copyBufs.Get().(*[]byte)
	for {
		n, rerr := bs.Read(*buf)
		c.wmu.Lock()
		if n > 0 {
			err = c.writeDataLocked(s, (*buf)[:n], false)
		}
		if err == nil && rerr != nil {
			if rerr == io.EOF {
				err = c.writeDataLocked(s, nil, true)
			} else {
				c.fr.WriteRSTStream(s.id, http2.ErrCodeInternal) // the instance's body broke off
				s.ended = true
			}
		}
		c.unlockFlush()
		if err != nil || rerr != nil {
			break
		}
	}
	copyBufs.Put(buf)
	resp.CloseBodyStream()
}

// blockStart begins a header block in c.hbuf; the connection's first
// block also says that the encoder keeps no dynamic table. c.wmu held.
func (c *leanConn) blockStart() []byte {
	b := c.hbuf[:0]
	if !c.sentTable {
		c.sentTable = true
		b = append(b, 0x20) // dynamic table size update: 0 (RFC 7541 6.3)
	}
	return b
}

// writeBlockLocked sends a header block on s, in CONTINUATIONs past the
// client's frame size. c.wmu held.
func (c *leanConn) writeBlockLocked(s *leanStream, b []byte, end bool) error {
	c.hbuf = b[:0]
	if s.reset || c.wclosed {
		return errLeanClosed
	}
	if end {
		s.ended = true
	}
	return c.writeBlock(s.id, b, end)
}

// nameContentLength is the field name, as hpackField takes it with a value in bytes.
var nameContentLength = []byte("content-length")

func (c *leanConn) writeBlock(id uint32, b []byte, end bool) error {
	max := int(c.peerMaxFrame)
	first := b
	if len(first) > max {
		first = first[:max]
	}
	b = b[len(first):]
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(b) == 0})
	for err == nil && len(b) > 0 {
		n := min(len(b), max)
		err = c.fr.WriteContinuation(id, n == len(b), b[:n])
		b = b[n:]
	}
	return err
}

// writeDataLocked sends b on s as the flow-control windows let it, waiting
// for WINDOW_UPDATEs, with END_STREAM at its end if end. c.wmu held.
func (c *leanConn) writeDataLocked(s *leanStream, b []byte, end bool) error {
	for {
		if s.reset || c.wclosed || s.ended {
			return errLeanClosed
		}
		if len(b) == 0 {
			if !end {
				return nil
			}
			s.ended = true
			return c.fr.WriteData(s.id, true, nil)
		}
		n := min(int32(len(b)), s.sendWin, c.sendWin, int32(c.peerMaxFrame))
		if n <= 0 {
			c.takeOver()      // a stream served on the reader: only a frame read can open the window
			c.bc.flushAsync() // what is pending may be what the client waits for to open the window
			c.wcond.Wait()
			continue
		}
		last := end && int(n) == len(b)
		if err := c.fr.WriteData(s.id, last, b[:n]); err != nil {
			return err
		}
		s.sendWin -= n
		c.sendWin -= n
		b = b[n:]
		if last {
			s.ended = true
			return nil
		}
	}
}

// leanBody is a stream's request body: the DATA the reader received, not
// yet read by the handler.
type leanBody struct {
	s    *leanStream
	mu   sync.Mutex
	buf  []byte
	off  int
	err  error         // at the end of buf: io.EOF, or why the body ended
	wake chan struct{} // capacity 1: data or the end arrived
	from time.Time     // when the stream began: the body timeout counts from it
}

func (b *leanBody) init(s *leanStream) {
	b.s = s
	if b.wake == nil {
		b.wake = make(chan struct{}, 1)
	}
	b.from = time.Now()
}

func (b *leanBody) reset() {
	b.s, b.err, b.off = nil, nil, 0
	b.buf = b.buf[:0]
	if cap(b.buf) > 64<<10 {
		b.buf = nil
	}
	select {
	case <-b.wake:
	default:
	}
}

// push appends DATA; false when the body is no longer read.
func (b *leanBody) push(p []byte) bool {
	b.mu.Lock()
	ok := b.err == nil
	if ok {
		if b.off == len(b.buf) {
			b.buf, b.off = b.buf[:0], 0
		}
		b.buf = append(b.buf, p...)
	}
	b.mu.Unlock()
	b.signal()
	return ok
}

// end ends the body with err once what was pushed is read (EOF), or at
// once for another error.
func (b *leanBody) end(err error) {
	if b.wake == nil {
		return // never initialized: no body
	}
	b.mu.Lock()
	if b.err == nil || (b.err == io.EOF && err != io.EOF) {
		b.err = err
	}
	b.mu.Unlock()
	b.signal()
}

func (b *leanBody) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// unread is the bytes received and never read.
func (b *leanBody) unread() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.buf) - b.off
}

func (b *leanBody) Read(p []byte) (int, error) {
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	for {
		b.mu.Lock()
		if b.off < len(b.buf) && (b.err == nil || b.err == io.EOF || b.err == io.ErrUnexpectedEOF) {
			n := copy(p, b.buf[b.off:])
			b.off += n
			b.mu.Unlock()
			b.s.c.credit(b.s, int32(n))
			return n, nil
		}
		if err := b.err; err != nil {
			b.mu.Unlock()
			return 0, err
		}
		b.mu.Unlock()
		if t == nil {
			t = time.NewTimer(time.Until(b.from.Add(b.s.c.p.cfg.BodyTimeout)))
		}
		select {
		case <-b.wake:
		case <-t.C:
			b.end(errBodyTimeout)
		}
	}
}

// Close stops the body: what arrives after is dropped.
func (b *leanBody) Close() error {
	b.end(errBodyClosed)
	return nil
}

type leanTimeout struct{}

func (leanTimeout) Error() string { return "proxy: http2: request body timeout" }
func (leanTimeout) Timeout() bool { return true }

var (
	errBodyTimeout error = leanTimeout{}
	errBodyClosed        = io.ErrClosedPipe
)
