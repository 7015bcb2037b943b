package proxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/http2"
)

// h2cUpgrades serves the plain listener's connections that switched to
// HTTP/2 by an HTTP/1.1 request with Upgrade: h2c (RFC 7540 3.2). net/http's
// server cannot take a connection in the middle of an upgrade, so these
// run on x/net/http2's, whose ServeConn takes the upgrade request as
// stream 1; its settings are the HTTP/2 front's.
type h2cUpgrades struct {
	open *atomic.Int64 // the HTTP/2 front's count of client connections
	xs   *http2.Server
	base *http.Server // never serves: x/net's settings, and its graceful shutdown

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

func (f *h2Front) newUpgrades(h http.Handler) *h2cUpgrades {
	s := f.srv
	u := &h2cUpgrades{open: &f.open, conns: map[net.Conn]struct{}{}}
	u.base = &http.Server{Handler: h, MaxHeaderBytes: s.MaxHeaderBytes, ReadTimeout: s.ReadTimeout,
		WriteTimeout: s.WriteTimeout, IdleTimeout: s.IdleTimeout, HTTP2: s.HTTP2, ErrorLog: s.ErrorLog}
	u.xs = &http2.Server{}
	if err := http2.ConfigureServer(u.base, u.xs); err != nil {
		panic("proxy: configuring x/net/http2: " + err.Error()) // only for a TLS config, which base has not
	}
	return u
}

// h2cUpgrade switches the connection to HTTP/2 when the request asks
// for it, and reports whether it did: the request is then stream 1 of the
// new connection, answered by serveH2. A request with a body is not
// upgraded (it is served as HTTP/1.1, the Upgrade ignored, as RFC 9110
// 7.8 allows): RFC 9113 deprecates the upgrade, and Go's h2c package
// would hold the whole body in memory first. Neither is a request whose
// HTTP2-Settings is missing, given twice or malformed (RFC 7540 3.2.1),
// nor one past max_conns.
func (p *Proxy) h2cUpgrade(ctx *fasthttp.RequestCtx) bool {
	h := &ctx.Request.Header
	if !hasToken(h.Peek("Upgrade"), "h2c") || !hasToken(h.Peek("Connection"), "upgrade") ||
		!hasToken(h.Peek("Connection"), "http2-settings") {
		return false
	}
	if cl := h.ContentLength(); cl != 0 && cl != -2 { // -2: no Content-Length, not chunked: no body
		return false
	}
	var settings []byte
	n := 0
	for _, v := range h.PeekAll("Http2-Settings") {
		n++
		var err error
		if settings, err = base64.RawURLEncoding.DecodeString(string(bytes.TrimRight(v, "="))); err != nil {
			return false
		}
	}
	if n != 1 || len(settings)%6 != 0 || p.h2.open.Load() >= int64(p.cfg.MaxConns) {
		return false
	}
	uri := string(h.RequestURI())
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return false
	}
	req := &http.Request{Method: string(h.Method()), URL: u, RequestURI: uri, Proto: "HTTP/2.0", ProtoMajor: 2,
		Host: string(h.Host()), Header: http.Header{}, Body: http.NoBody, RemoteAddr: ctx.RemoteAddr().String()}
	for k, v := range h.All() {
		switch string(k) {
		case "Host", "Content-Length", "Connection", "Upgrade", "Http2-Settings", "Keep-Alive", "Proxy-Connection", "Te":
			continue
		}
		req.Header.Add(string(k), string(v))
	}
	up := p.h2.up
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) { up.serve(c, req, settings) })
	return true
}

// serve answers 101 and serves c as HTTP/2 until it closes.
func (u *h2cUpgrades) serve(c net.Conn, req *http.Request, settings []byte) {
	u.mu.Lock()
	if u.closing {
		u.mu.Unlock()
		return // fasthttp closes c
	}
	u.conns[c] = struct{}{}
	u.wg.Add(1)
	u.mu.Unlock()
	u.open.Add(1)
	defer func() {
		u.open.Add(-1)
		u.mu.Lock()
		delete(u.conns, c)
		u.mu.Unlock()
		u.wg.Done()
	}()
	c.SetDeadline(time.Time{}) // fasthttp's; HTTP/2 keeps its own
	if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"); err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	u.xs.ServeConn(c, &http2.ServeConnOpts{Context: ctx, BaseConfig: u.base, Handler: u.base.Handler,
		UpgradeRequest: req.WithContext(ctx), Settings: settings})
}

// shutdown sends GOAWAY on every upgraded connection, waits for their
// streams until ctx ends, then closes what is left.
func (u *h2cUpgrades) shutdown(ctx context.Context) {
	u.mu.Lock()
	u.closing = true
	u.mu.Unlock()
	u.base.Shutdown(ctx) // runs x/net's hook: GOAWAY on each connection
	done := make(chan struct{})
	go func() { u.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	u.mu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	<-done
}

// hasToken reports whether a comma-separated header value has tok, case
// insensitively.
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		if bytes.EqualFold(bytes.TrimSpace(t), []byte(tok)) {
			return true
		}
	}
	return false
}
