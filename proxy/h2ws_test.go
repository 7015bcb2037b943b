package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/websocket"
)

// wsWrite sends one masked text frame, as a client must (RFC 6455 5.3).
func wsWrite(w io.Writer, msg string) error {
	var mask [4]byte
	rand.Read(mask[:])
	b := []byte{0x81}
	switch n := len(msg); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, mask[:]...)
	for i := range len(msg) {
		b = append(b, msg[i]^mask[i%4])
	}
	_, err := w.Write(b)
	return err
}

// wsRead reads one unmasked frame from the server and returns its payload.
func wsRead(r io.Reader) (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", err
	}
	if h[1]&0x80 != 0 {
		return "", errors.New("a masked frame from the server")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return "", err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return "", err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	p := make([]byte, n)
	_, err := io.ReadFull(r, p)
	return string(p), err
}

// extendedConnect opens a WebSocket over an HTTP/2 stream (RFC 8441) with
// x/net/http2's client Transport: h2c with prior knowledge, or over TLS
// with conf.
func extendedConnect(t *testing.T, addr, path string, conf ...*tls.Config) (*http.Response, *io.PipeWriter) {
	t.Helper()
	tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || len(conf) == 0 {
			return c, err
		}
		tc := tls.Client(c, conf[0])
		return tc, tc.HandshakeContext(ctx)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "http://a.test"+path, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(":protocol", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Origin", "http://a.test/")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, pw
}

// TestH2WebSocket: a WebSocket opened by extended CONNECT on an HTTP/2
// stream reaches a real WebSocket server (x/net/websocket, HTTP/1.1 only)
// through an HTTP/1.1 upgrade; messages go both ways, the tunnel counts in
// flight on its instance, and a refused handshake is passed on.
func TestH2WebSocket(t *testing.T) {
	echoSrv := &http.Server{Handler: websocket.Handler(func(c *websocket.Conn) {
		io.Copy(c, c)
	}), ReadHeaderTimeout: 10 * time.Second}
	ln := listen(t)
	go echoSrv.Serve(ln)
	t.Cleanup(func() { echoSrv.Close() })
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.Routes = []Route{{Path: "/ws/", Service: "ws", Strip: "/ws"}, {Path: "/plain/", Service: "plain"}}
	})
	e.register("ws-1", "ws", ln.Addr().String(), 1)
	be := newBackend(t, "plain")
	e.register("plain-1", "plain", be.addr, 1)
	e.synced()

	resp, pw := extendedConnect(t, e.addr, "/ws/echo")
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("extended CONNECT answered %s %d; want HTTP/2 200", resp.Proto, resp.StatusCode)
	}
	for _, msg := range []string{"hello", "over", "HTTP/2", strings.Repeat("big", 30000)} {
		if err := wsWrite(pw, msg); err != nil {
			t.Fatal(err)
		}
		// x/net/websocket's io.Copy echoes a large message as several.
		var got string
		var err error
		for err == nil && len(got) < len(msg) {
			var part string
			part, err = wsRead(resp.Body)
			got += part
		}
		if err != nil || got != msg {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
		}
	}
	if r := e.p.Routes(); r[1].Instances[0].InFlight != 1 {
		t.Errorf("the tunnel is not in flight on its instance: %+v", r[1])
	}
	pw.Close()
	resp.Body.Close()

	// A server that does not speak WebSocket answers the handshake (an
	// HTTP/1.1 GET with Upgrade: websocket and pier's key) as it likes;
	// its answer reaches the client.
	resp, _ = extendedConnect(t, e.addr, "/plain/x")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("a handshake the instance did not take: %d %s", resp.StatusCode, body)
	}
	ec := decode(t, string(body))
	if ec.Method != "GET" || ec.URI != "/plain/x" || ec.Header.Get("Upgrade") != "websocket" || len(ec.Header.Get("Sec-Websocket-Key")) != 24 ||
		ec.Header.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Errorf("the instance saw %+v", ec)
	}

	// No instance up: 502.
	be.stop()
	e.deregister("ws-1")
	e.register("ws-dead", "ws", deadPort(t), 1)
	e.synced()
	resp, _ = extendedConnect(t, e.addr, "/ws/echo")
	if resp.StatusCode != 502 {
		t.Errorf("no instance reachable: %d", resp.StatusCode)
	}
}

// TestH2WebSocketOverTLS: the way a browser opens wss:// on an HTTP/2
// connection: ALPN h2 on the TLS listener, then extended CONNECT.
func TestH2WebSocketOverTLS(t *testing.T) {
	echoSrv := &http.Server{Handler: websocket.Handler(func(c *websocket.Conn) {
		io.Copy(c, c)
	}), ReadHeaderTimeout: 10 * time.Second}
	ln := listen(t)
	go echoSrv.Serve(ln)
	t.Cleanup(func() { echoSrv.Close() })
	e := newTLSEnv(t, nil, func(c *Config) { c.Routes = []Route{{Path: "/ws/", Service: "ws", Strip: "/ws"}} })
	e.register("ws-1", "ws", ln.Addr().String(), 1)
	e.synced()
	roots := x509.NewCertPool()
	roots.AddCert(e.a)
	resp, pw := extendedConnect(t, e.tlsAddr, "/ws/echo", &tls.Config{ServerName: "a.test", RootCAs: roots, NextProtos: []string{"h2"}})
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || resp.TLS == nil {
		t.Fatalf("extended CONNECT over TLS: %s %d", resp.Proto, resp.StatusCode)
	}
	if err := wsWrite(pw, "wss over h2"); err != nil {
		t.Fatal(err)
	}
	if got, err := wsRead(resp.Body); err != nil || got != "wss over h2" {
		t.Fatalf("echo: %q %v", got, err)
	}
}
