package proxy

import (
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// WrapTLS returns ln (the front door's TLS listener, before TLS) with SNI
// passthrough in front: each connection's ClientHello is read (bounded by
// maxHelloBytes and tcp_hello_timeout); a connection naming a passthrough
// route (proxy.tcp's sni without listen, or a proto=tcp+sni tag) for which
// pier holds no certificate goes to the TCP proxy with the bytes read
// replayed to the instance, and every other connection is handed on
// unchanged, its bytes replayed, to the listener's caller, which
// terminates TLS.
func (t *TCPProxy) WrapTLS(ln net.Listener) net.Listener {
	return &sniListener{Listener: ln, t: t, conns: make(chan net.Conn), done: make(chan struct{})}
}

type sniListener struct {
	net.Listener
	t     *TCPProxy
	start sync.Once
	conns chan net.Conn
	done  chan struct{} // closed, after err is set, when the inner listener fails
	err   error
}

func (l *sniListener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.loop() })
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

func (l *sniListener) loop() {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || isFileLimit(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			l.err = err
			close(l.done)
			return
		}
		delay = 0
		go l.classify(c)
	}
}

// classify peeks at c's ClientHello and sends it where its name says.
// Connections being peeked at are bounded by the proxy's max_conns, as
// the server behind bounds those it serves: past it, a connection is
// closed unread rather than held for its hello.
func (l *sniListener) classify(c net.Conn) {
	t := l.t
	if n := t.peeking.Add(1); n > int64(t.p.cfg.MaxConns) {
		t.peeking.Add(-1)
		t.met.refused(l.Addr().String(), "too_many")
		c.Close()
		return
	}
	hello, name, err := peekHello(c, t.cfg.HelloTimeout)
	t.peeking.Add(-1)
	if err == nil && name != "" && !t.p.hasCertificate(name) {
		if rt := (*t.sni.Load())[name]; rt != nil {
			if t.track(nil) {
				defer t.wg.Done()
				t.handle(c, rt, hello)
			} else {
				c.Close()
			}
			return
		}
	}
	select {
	case l.conns <- &replayConn{Conn: c, buf: hello}:
	case <-l.done:
		c.Close()
	}
}

// passthroughOnly serves a connection on a listener of SNI routes only: a
// ClientHello without a name, a name with no route, or anything that is not
// a ClientHello is closed, logged and counted.
func (t *TCPProxy) passthroughOnly(l *tcpListener, c net.Conn) {
	hello, name, err := peekHello(c, t.cfg.HelloTimeout)
	var rt *tcpRoute
	reason := ""
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		reason = "hello_timeout"
	case err != nil:
		reason = "bad_hello"
	case name == "":
		reason = "no_sni"
	default:
		if m := l.byName.Load(); m != nil {
			rt = (*m)[name]
		}
		if rt == nil {
			reason = "unknown_sni"
		}
	}
	if rt == nil {
		t.refusePassthrough(l, func() string { return c.RemoteAddr().String() }, reason, name)
		c.Close()
		return
	}
	t.handle(c, rt, hello)
}

// refusePassthrough counts and logs a connection a passthrough-only
// listener closes (client gives its address, asked only when logged).
func (t *TCPProxy) refusePassthrough(l *tcpListener, client func() string, reason, name string) {
	t.met.refused(l.ln.Addr().String(), reason)
	// At most one line a second: a scanner must not flood the log;
	// the metric counts every one.
	if now := time.Now().UnixNano(); now-l.logged.Load() >= int64(time.Second) {
		l.logged.Store(now)
		t.p.log.Info("tcp passthrough: connection closed", "listen", l.ln.Addr().String(), "client", client(), "reason", reason, "sni", name)
	}
}

// peekHello reads c until it holds a whole ClientHello and returns what it
// read and the server name. On an error, what was read is returned too, to
// be replayed to a TLS server that will refuse it with a proper alert.
func peekHello(c net.Conn, timeout time.Duration) ([]byte, string, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 2048)
	for {
		name, need, err := parseClientHello(buf)
		if err != nil || need == 0 {
			return buf, name, err
		}
		if len(buf)+need > maxHelloBytes+5 {
			return buf, "", errBadHello
		}
		if cap(buf)-len(buf) < need {
			nb := make([]byte, len(buf), min(max(2*cap(buf), len(buf)+need), maxHelloBytes+5))
			copy(nb, buf)
			buf = nb
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return buf, "", err
		}
	}
}

// replayConn gives back the bytes the peek read before reading on.
type replayConn struct {
	net.Conn
	buf []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite lets a tunnel half-close the connection underneath.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// hasCertificate reports whether the front door holds a certificate for
// name (exactly, or by a wildcard for its parent); the first certificate,
// served to names no certificate lists, does not count.
func (p *Proxy) hasCertificate(name string) bool {
	if p.certs == nil {
		return false
	}
	set := p.certs.set.Load()
	if _, ok := set.byName[name]; ok || p.acme.managed(name) {
		return true
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		_, ok := set.byName["*"+name[i:]]
		return ok
	}
	return false
}
