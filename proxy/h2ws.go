package proxy

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	_ "github.com/pier-dev/pier/internal/h2xconnect" // extended CONNECT on in Go's HTTP/2 servers
	"github.com/pier-dev/pier/lb"
)

// wsHandshakeTimeout bounds sending a WebSocket handshake to an instance
// and reading its answer (nginx's proxy_read_timeout default).
const wsHandshakeTimeout = 60 * time.Second

// isExtendedConnect reports whether req is an RFC 8441 extended CONNECT
// (a WebSocket over an HTTP/2 stream); net/http puts :protocol in the
// header.
func isExtendedConnect(req *http.Request) bool {
	return req.Method == http.MethodConnect && req.Header.Get(":protocol") != ""
}

// tunnelH2 serves a WebSocket opened on an HTTP/2 stream (RFC 8441) as
// nginx-less Envoy does: the instance gets an HTTP/1.1 WebSocket
// handshake (GET with Upgrade: websocket and a Sec-WebSocket-Key of the
// proxy's, whose Sec-WebSocket-Accept is checked), and once it answers 101
// the client gets 200 and the stream carries the WebSocket's bytes both
// ways until either side ends. Only connecting is retried; an instance
// that refuses the handshake has its answer passed on.
func (p *Proxy) tunnelH2(w http.ResponseWriter, req *http.Request, r *route, start time.Time) {
	if !strings.EqualFold(req.Header.Get(":protocol"), "websocket") {
		p.h2Error(w, req, r, start, nil, 0, http.StatusNotImplemented, "pier: extended CONNECT with :protocol "+strconv.Quote(req.Header.Get(":protocol"))+" is not supported (websocket is)")
		return
	}
	pool := p.pool(r)
	if pool.Len() == 0 {
		p.catchUp()
		pool = p.pool(r)
	}
	conn, b, n := p.dialTunnel(r, pool)
	if conn == nil {
		p.h2Error(w, req, r, start, nil, n, http.StatusBadGateway, "pier: service \""+r.Service+"\" is unavailable")
		return
	}
	defer b.Release()
	if !p.addTunnel(conn) {
		conn.Close()
		p.h2Error(w, req, r, start, nil, n, http.StatusServiceUnavailable, "pier: shutting down")
		return
	}
	defer p.removeTunnel(conn)
	defer conn.Close()

	var kb [16]byte
	rand.Read(kb[:])
	key := base64.StdEncoding.EncodeToString(kb[:])
	path, query, _ := cutQuery(req.RequestURI)
	target := string(r.rewrite(make([]byte, 0, len(path)+len(r.prepend)), []byte(path))) + query
	hdr := grpcRequestHeader(req) // the client's fields, hop-by-hop ones out, and the forwarding ones
	hdr.Del("Te")
	hdr.Del(":protocol")
	hdr.Del("Sec-Websocket-Key")
	hdr.Del("Sec-Websocket-Accept")
	hdr.Del("Content-Length")
	if hdr.Get("Sec-Websocket-Version") == "" {
		hdr.Set("Sec-Websocket-Version", "13")
	}
	hdr.Set("Sec-Websocket-Key", key)
	conn.SetDeadline(time.Now().Add(wsHandshakeTimeout))
	bw := bufio.NewWriter(conn)
	bw.WriteString("GET " + target + " HTTP/1.1\r\nHost: " + req.Host + "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n")
	hdr.Write(bw)
	bw.WriteString("\r\n")
	br := bufio.NewReader(conn)
	var resp *http.Response
	err := bw.Flush()
	if err == nil {
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		// The handshake was sent: the instance may have acted on it.
		p.log.Debug("WebSocket handshake with backend failed", "service", r.Service, "addr", b.Addr(), "err", err)
		p.h2Error(w, req, r, start, b, n, http.StatusBadGateway, "pier: service \""+r.Service+"\" is unavailable")
		return
	}
	b.Succeed()
	h := w.Header()
	for k, vs := range resp.Header {
		if isHopByHop(k) || k == "Sec-Websocket-Accept" || k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		h[k] = vs
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// A refusal (403, 404, ...) reaches the client as it was.
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
		resp.Body.Close()
		p.h2Done(req, r, start, b, n, resp.StatusCode)
		return
	}
	if resp.Header.Get("Sec-Websocket-Accept") != wsAccept(key) {
		for k := range h {
			delete(h, k)
		}
		p.h2Error(w, req, r, start, b, n, http.StatusBadGateway, "pier: the instance's WebSocket handshake answer is not valid")
		return
	}
	conn.SetDeadline(time.Time{})
	w.WriteHeader(http.StatusOK)
	http.NewResponseController(w).Flush()
	p.h2Done(req, r, start, b, n, http.StatusOK)
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(conn, req.Body) // client -> instance, until the client ends its stream
		closeWrite(conn)
	}()
	copyFlushing(w, br) // instance -> client; br holds what came after the 101
	// The instance is done: end the stream, and stop the client's side.
	req.Body.Close()
	conn.Close()
	<-done
}

// wsAccept is the Sec-WebSocket-Accept that answers key (RFC 6455 4.2.2).
func wsAccept(key string) string {
	s := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(s[:])
}

// h2Error answers an HTTP/2 request that serve did not handle with pier's
// own error, and records it.
func (p *Proxy) h2Error(w http.ResponseWriter, req *http.Request, r *route, start time.Time, b *lb.Backend, tries, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, msg+"\n")
	p.h2Done(req, r, start, b, tries, code)
}

// h2Done records a request the HTTP/2 server answered itself in the
// metrics and the access log.
func (p *Proxy) h2Done(req *http.Request, r *route, start time.Time, b *lb.Backend, tries, code int) {
	if p.met != nil {
		p.met.done(r, code, start, tries)
	}
	if p.alog != nil {
		svc := ""
		if r != nil {
			svc = r.Service
		}
		p.alog.writeH2(req, code, time.Now(), start, svc, b, tries, "")
	}
}
