package lb

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"

	"github.com/valyala/fasthttp"
)

// TLS is how a route reaches its instances over TLS. The pointer is the
// key of a backend's TLS clients: routes with equal settings must share one
// *TLS (the caller interns them), so that they share one connection pool
// per instance. It must not change once used.
type TLS struct {
	ServerName string         // sent as SNI and verified; "": the instance's host (an IP is checked against the certificate's IP addresses)
	SkipVerify bool           // accept any certificate (tls_skip_verify)
	RootCAs    *x509.CertPool // nil: the system's roots
}

// tlsClient is a backend's client for one set of TLS settings.
type tlsClient struct {
	tls    *TLS
	client *fasthttp.HostClient
	conf   *tls.Config // for tunnels, which dial themselves
}

// ClientFor returns the client that reaches the backend with the TLS
// settings t, or the plain HTTP client when t is nil. The in-flight count
// and passive-failure state stay the backend's whatever the client: they
// describe the instance, which is as loaded and as healthy whichever
// protocol a route speaks to it. A client is made the first time a route
// with t reaches the backend and kept as long as the backend; after that
// ClientFor neither allocates nor locks.
func (b *Backend) ClientFor(t *TLS) *fasthttp.HostClient {
	if t == nil {
		return b.client
	}
	return b.tlsClientFor(t).client
}

func (b *Backend) tlsClientFor(t *TLS) *tlsClient {
	if cs := b.tlsClients.Load(); cs != nil {
		for _, c := range *cs {
			if c.tls == t {
				return c
			}
		}
	}
	b.tlsMu.Lock()
	defer b.tlsMu.Unlock()
	var cs []*tlsClient
	if p := b.tlsClients.Load(); p != nil {
		cs = *p
		for _, c := range cs {
			if c.tls == t {
				return c // made while we waited for the lock
			}
		}
	}
	c := &tlsClient{tls: t, conf: b.tlsConfig(t)}
	c.client = b.newClient(c.conf)
	// Copy on write: readers hold the old slice without a lock.
	next := append(cs[:len(cs):len(cs)], c)
	b.tlsClients.Store(&next)
	return c
}

func (b *Backend) tlsConfig(t *TLS) *tls.Config {
	name := t.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(b.addr)
	}
	return &tls.Config{
		ServerName:         name,
		InsecureSkipVerify: t.SkipVerify,
		RootCAs:            t.RootCAs,
		MinVersion:         tls.VersionTLS12,
		// Resuming a session saves a full handshake each time a connection
		// is opened again after the idle timeout closed it.
		ClientSessionCache: tls.NewLRUClientSessionCache(16),
	}
}

// Dial opens a connection of its own to the backend, over TLS when t is
// set, for a caller that speaks on it directly (a WebSocket tunnel). An
// error connecting or in the TLS handshake is a *DialError.
func (b *Backend) Dial(t *TLS) (net.Conn, error) {
	var conf *tls.Config
	if t != nil {
		conf = b.tlsClientFor(t).conf
	}
	return dial(b.addr, b.cfg, conf, false)
}

// dial connects to addr and, with conf, completes a TLS handshake within
// the same connect timeout: a backend that accepts but never answers the
// handshake is as unreachable as one that does not accept. With idle, reads
// and writes get the idle deadlines of idleConn, beneath TLS so that they
// bound the wait for bytes on the wire.
func dial(addr string, cfg *Config, conf *tls.Config, idle bool) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, cfg.ConnectTimeout)
	if err != nil {
		return nil, &DialError{Addr: addr, Err: err}
	}
	if idle && (cfg.ReadTimeout > 0 || cfg.WriteTimeout > 0) {
		c = &idleConn{Conn: c, read: cfg.ReadTimeout, write: cfg.WriteTimeout}
	}
	if conf == nil {
		return c, nil
	}
	tc := tls.Client(c, conf)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.Close()
		return nil, &DialError{Addr: addr, Err: err}
	}
	return tc, nil
}

// closeIdle closes the idle keep-alive connections of every client.
func (b *Backend) closeIdle() {
	b.client.CloseIdleConnections()
	if cs := b.tlsClients.Load(); cs != nil {
		for _, c := range *cs {
			c.client.CloseIdleConnections()
		}
	}
}
