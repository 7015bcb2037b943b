//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pier-dev/pier/lb"
)

// The event loop's hand-overs to goroutines once a request is under way
// (evloop_fast_linux.go): a response to stream, a client to wait for, an
// instance to reach by name.

// streamUp gives fr, its backend connection and the bytes read from it to
// a goroutine that streams the response.
func (l *loop) streamUp(fr *fastReq) {
	l.untrack(fr)
	uc := fr.up
	uc.fr, fr.up = nil, nil
	fd := l.detachUp(uc)
	l.fast.handed.Add(1)
	l.workers.Add(1)
	go l.streamResponse(fr, fd)
}

// streamResponse reads the response of fr's backend, the bytes the loop
// read first, with fasthttp's client types, and streams it to the client.
func (l *loop) streamResponse(fr *fastReq, fd int) {
	defer l.workers.Done()
	p := l.p
	b := fr.tried[fr.n-1]
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		b.Release()
		l.closeFast(fr)
		return
	}
	defer nc.Close()
	up := &deadlineReader{c: nc, d: l.fast.cfg.ReadTimeout}
	br := bufio.NewReaderSize(io.MultiReader(bytes.NewReader(fr.rb), up), 4096)
	resp := &fr.ctx.Response
	resp.Reset()
	resp.Header.SetNoDefaultContentType(true)
	resp.Header.DisableNormalizing()
	resp.StreamBody = true
	resp.SkipBody = fr.ctx.Request.Header.IsHead()
	if err = resp.Read(br); err != nil {
		if x, ok := err.(interface{ Timeout() bool }); ok && x.Timeout() {
			err = fasthttp.ErrTimeout
		}
		p.tryFailed(fr.st.r, b, &fr.ctx.Request, fr.n, err)
		p.unavailable(&fr.ctx, &fr.st, err, fr.tried[:fr.n])
		l.finishWrite(fr, nil)
		return
	}
	b.Succeed()
	cleanResponse(&resp.Header)
	p.access(&fr.ctx, fr.st.origURI, fr.st.start, fr.st.r, b, fr.n)
	l.finishWrite(fr, b)
}

// deadlineReader reads with a fresh deadline for each read: the wait for
// the next byte, as lb's connections have it.
type deadlineReader struct {
	c net.Conn
	d time.Duration
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	if r.d > 0 {
		r.c.SetReadDeadline(time.Now().Add(r.d))
	}
	return r.c.Read(p)
}

// finishBlocking makes fr's attempts, from the one just picked, with the
// backends' HostClients, and answers.
func (l *loop) finishBlocking(fr *fastReq) {
	defer l.workers.Done()
	p := l.p
	req, resp := &fr.ctx.Request, &fr.ctx.Response
	for {
		b := fr.tried[fr.n-1]
		err := b.ClientFor(nil).Do(req, resp)
		if err == nil {
			b.Succeed()
			cleanResponse(&resp.Header)
			p.access(&fr.ctx, fr.st.origURI, fr.st.start, fr.st.r, b, fr.n)
			l.finishWrite(fr, b)
			return
		}
		fr.err = err
		if !p.tryFailed(fr.st.r, b, req, fr.n, err) || fr.n >= p.cfg.Tries ||
			(p.cfg.TryTimeout > 0 && time.Since(fr.st.start) > p.cfg.TryTimeout) {
			break
		}
		nb := fr.st.pool.Pick(fr.tried[:fr.n])
		if nb == nil {
			break
		}
		fr.tried[fr.n] = nb
		fr.n++
	}
	p.unavailable(&fr.ctx, &fr.st, fr.err, fr.tried[:fr.n])
	l.finishWrite(fr, nil)
}

// finishWrite writes fr's response from a goroutine, waiting as long as
// the write timeout allows, ends the request on b (nil: none), and then
// serves the connection as a worker does.
func (l *loop) finishWrite(fr *fastReq, b *lb.Backend) {
	ctx := &fr.ctx
	c := fr.c
	closeConn := fr.closeReq || ctx.Request.Header.ConnectionClose() || ctx.Response.Header.ConnectionClose() || l.fast.closing.Load()
	if closeConn {
		ctx.Response.Header.SetConnectionClose()
	}
	if ctx.IsHead() {
		ctx.Response.SkipBody = true
	}
	if wt := l.p.cfg.WriteTimeout; wt > 0 {
		c.SetWriteDeadline(time.Now().Add(wt))
	}
	bw := bufio.NewWriterSize(c, 4096)
	err := ctx.Response.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	ctx.Response.Reset() // a streamed body's end: its connection is closed by the caller
	if b != nil {
		b.Release()
	}
	fr.off += fr.reqLen
	fr.reqLen = 0
	l.afterGoroutine(fr, closeConn || err != nil)
}

// writeRest writes the rest of a response the client's socket did not
// take at once, then serves the connection as a worker does.
func (l *loop) writeRest(fr *fastReq, rest []byte, b *lb.Backend, closeConn bool) {
	defer l.workers.Done()
	c := fr.c
	if wt := l.p.cfg.WriteTimeout; wt > 0 {
		c.SetWriteDeadline(time.Now().Add(wt))
	}
	_, err := c.Write(rest)
	if b != nil {
		b.Release()
	}
	l.afterGoroutine(fr, closeConn || err != nil)
}

// afterGoroutine closes fr's connection, or serves it on as a worker with
// the bytes not yet served first.
func (l *loop) afterGoroutine(fr *fastReq, closeConn bool) {
	c := fr.c
	if closeConn {
		l.closeFast(fr)
		return
	}
	l.headsFrom(c, fr.in[fr.off:fr.end])
	l.putFR(fr)
	c.SetWriteDeadline(time.Time{})
	c.peek = true
	l.serveConn(c)
}

// closeFastLoop closes the keep-alive connections of the loop's pools:
// the loop has stopped. (Its eventfd stays open until shutdown has
// stopped waking it.)
func (l *loop) closeFastLoop() {
	f := &l.fast
	for b, cs := range f.idle {
		for _, uc := range cs {
			l.closeUp(uc)
		}
		delete(f.idle, b)
	}
}
