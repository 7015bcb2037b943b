package proxy

import (
	"bufio"
	"io"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/pier-dev/pier/lb"
)

// tunnel serves an upgrade request (a WebSocket handshake): it connects to
// a backend, sends it the request, and from then on copies bytes both ways
// between the client and the backend until either side closes. The
// backend's answer (101 Switching Protocols, or a refusal) reaches the
// client through the same copy. Only connecting is retried: once the
// handshake was sent, the backend owns the connection.
func (p *Proxy) tunnel(ctx *fasthttp.RequestCtx, r *route, pool *lb.Pool, start time.Time, uri *logEntry) {
	conn, b, n := p.dialTunnel(r, pool)
	if conn == nil {
		ctx.Error("pier: service \""+r.Service+"\" is unavailable\n", fasthttp.StatusBadGateway)
		p.access(ctx, uri, start, r, nil, n)
		return
	}
	if !p.addTunnel(conn) {
		conn.Close()
		b.Release()
		ctx.Error("pier: shutting down\n", fasthttp.StatusServiceUnavailable)
		return
	}
	bw := bufio.NewWriter(conn)
	if err := ctx.Request.Header.Write(bw); err == nil {
		err = bw.Flush()
	}
	b.Succeed()
	ctx.Response.SetStatusCode(fasthttp.StatusSwitchingProtocols)
	p.access(ctx, uri, start, r, b, n)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(client net.Conn) {
		defer b.Release()
		defer p.removeTunnel(conn)
		done := make(chan struct{})
		go func() {
			io.Copy(conn, client) // client -> backend
			closeWrite(conn)
			close(done)
		}()
		io.Copy(client, conn) // backend -> client
		// The backend is done: whatever the client still sends has nowhere
		// to go, so stop reading it.
		closeWrite(client)
		client.SetReadDeadline(time.Now())
		<-done
		conn.Close()
	})
}

// dialTunnel connects to an instance of the route's pool for a tunnel,
// trying another on a failed connect (nothing was sent); n is the number
// of attempts. conn is nil when none could be reached.
func (p *Proxy) dialTunnel(r *route, pool *lb.Pool) (conn net.Conn, b *lb.Backend, n int) {
	var tried [maxTries]*lb.Backend
	for n < p.cfg.Tries {
		b = pool.Pick(tried[:n])
		if b == nil {
			break
		}
		tried[n] = b
		n++
		c, err := b.Dial(r.tls)
		if err == nil {
			return c, b, n
		}
		b.Release()
		if tlsMismatch(err) {
			p.warnTLS(r, b, err)
		} else if b.Fail(r.maxFails, r.failTimeout) {
			p.met.ejected(r)
			p.log.Warn("backend out of rotation after failures", "service", r.Service, "addr", b.Addr(), "err", err)
		}
	}
	return nil, nil, n
}

func closeWrite(c net.Conn) {
	if u, ok := c.(interface{ UnsafeConn() net.Conn }); ok {
		c = u.UnsafeConn()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}
