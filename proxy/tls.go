package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// TLSConfig is the front door's HTTPS side. The certificates are read in
// New and read again when their files change, so a renewed certificate is
// served without a restart.
type TLSConfig struct {
	Certs        []CertFiles   `json:"certs"`         // at least one; the first is served when SNI names no known host
	RedirectHTTP bool          `json:"redirect_http"` // the plain listener answers 308 to https instead of proxying
	RedirectPort int           `json:"redirect_port"` // port written into redirects (0 or 443: none)
	ReloadCheck  time.Duration `json:"-"`             // a handshake stats the files at most this often (0: 2s)
	ACME         *ACMEConfig   `json:"acme"`          // certificates from an ACME CA (acme.go); certs may then be empty
}

// CertFiles is one PEM certificate chain and its private key.
type CertFiles struct {
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
}

const defaultReloadCheck = 2 * time.Second

// certStore holds the loaded certificates and picks one per handshake by
// SNI. The set is an immutable snapshot swapped when a file changes.
type certStore struct {
	files   []CertFiles
	every   time.Duration
	log     *slog.Logger
	acme    *acmeManager // nil: no ACME
	set     atomic.Pointer[certSet]
	checked atomic.Int64 // unix nanoseconds of the last stat
	mu      sync.Mutex   // one reload at a time
}

type certSet struct {
	certs  []*tls.Certificate
	stamps []fileStamp // per certs entry: cert file, key file
	byName map[string]*tls.Certificate
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func newCertStore(cfg *TLSConfig, log *slog.Logger) (*certStore, error) {
	if len(cfg.Certs) == 0 && cfg.ACME == nil {
		return nil, errors.New("proxy: tls: at least one certificate is required")
	}
	if cfg.ReloadCheck < 0 || cfg.RedirectPort < 0 || cfg.RedirectPort > 65535 {
		return nil, errors.New("proxy: tls: invalid reload_check or redirect port")
	}
	s := &certStore{files: cfg.Certs, every: cfg.ReloadCheck, log: log}
	if s.every == 0 {
		s.every = defaultReloadCheck
	}
	set, err := s.load(nil)
	if err != nil {
		return nil, err
	}
	s.set.Store(set)
	s.checked.Store(time.Now().UnixNano())
	return s, nil
}

// load reads every pair whose files changed since prev (all of them when
// prev is nil); an unchanged pair keeps its parsed certificate.
func (s *certStore) load(prev *certSet) (*certSet, error) {
	set := &certSet{byName: map[string]*tls.Certificate{}}
	for i, f := range s.files {
		cs, err := stamp(f.CertFile)
		if err != nil {
			return nil, fmt.Errorf("proxy: tls: %w", err)
		}
		ks, err := stamp(f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("proxy: tls: %w", err)
		}
		var c *tls.Certificate
		if prev != nil && prev.stamps[2*i] == cs && prev.stamps[2*i+1] == ks {
			c = prev.certs[i]
		} else {
			pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("proxy: tls: %s: %w", f.CertFile, err)
			}
			if pair.Leaf == nil {
				if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
					return nil, fmt.Errorf("proxy: tls: %s: %w", f.CertFile, err)
				}
			}
			c = &pair
		}
		set.certs = append(set.certs, c)
		set.stamps = append(set.stamps, cs, ks)
		names := c.Leaf.DNSNames
		if len(names) == 0 && c.Leaf.Subject.CommonName != "" {
			names = []string{c.Leaf.Subject.CommonName}
		}
		for _, n := range names {
			n = strings.ToLower(n)
			if _, dup := set.byName[n]; !dup { // the first pair naming a host wins
				set.byName[n] = c
			}
		}
	}
	return set, nil
}

func stamp(name string) (fileStamp, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// maybeReload stats the files if the last check is older than s.every and
// swaps in a new set when one changed. A pair that fails to load (a
// half-written file) is logged and the old set stays in use.
func (s *certStore) maybeReload(now time.Time) {
	last := s.checked.Load()
	if now.UnixNano()-last < int64(s.every) || !s.checked.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	if !s.mu.TryLock() {
		return
	}
	defer s.mu.Unlock()
	prev := s.set.Load()
	set, err := s.load(prev)
	if err != nil {
		s.log.Warn("certificate reload failed; keeping the loaded certificates", "err", err)
		return
	}
	changed := false
	for i := range set.certs {
		if set.certs[i] != prev.certs[i] {
			changed = true
		}
	}
	if changed {
		s.set.Store(set)
		s.log.Info("certificates reloaded")
	}
}

// getCertificate picks by SNI: the exact name, then a wildcard for the
// name's parent, then an ACME certificate, then the first certificate. A
// TLS-ALPN-01 challenge goes to ACME first.
func (s *certStore) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.maybeReload(time.Now())
	set := s.set.Load()
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if s.acme != nil && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmeALPN {
		if c, ok := s.acme.certificate(hello, name); ok {
			return c, nil
		}
		return nil, errors.New("proxy: tls: no ACME challenge for " + name)
	}
	if c, ok := set.byName[name]; ok {
		return c, nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c, ok := set.byName["*"+name[i:]]; ok {
			return c, nil
		}
	}
	if s.acme != nil {
		if c, ok := s.acme.certificate(hello, name); ok {
			return c, nil
		}
	}
	if len(set.certs) == 0 {
		return nil, errors.New("proxy: tls: no certificate for " + strconv.Quote(name))
	}
	return set.certs[0], nil
}

// tlsConfig is TLS 1.2 and up; for 1.2 only forward-secret AEAD suites
// (TLS 1.3's suites are not configurable and all modern).
// With h2, ALPN offers HTTP/2 first.
func (s *certStore) tlsConfig(h2 bool) *tls.Config {
	protos := []string{"http/1.1"}
	if h2 {
		protos = []string{"h2", "http/1.1"}
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.getCertificate,
		NextProtos:     s.nextProtos(protos),
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
}

// RunTLS serves HTTPS on ln (a plain TCP listener) until ctx ends. It
// shares the proxy's server, routes and limits with Run, which must run
// too: Run keeps the routes current and drains connections at shutdown.
func (p *Proxy) RunTLS(ctx context.Context, ln net.Listener) error {
	if p.certs == nil {
		return errors.New("proxy: RunTLS without a tls config")
	}
	h2 := p.h2 != nil && p.cfg.HTTP2.Enabled
	var under net.Listener = ln
	if h2 {
		under = batchListener{ln} // batching from the handshake on, for connections that choose h2
	}
	tln := &onceCloser{Listener: tls.NewListener(under, p.certs.tlsConfig(h2))}
	var h1 net.Listener = tln
	if h2 {
		// Connections that chose h2 go to the HTTP/2 server; the others
		// stay with fasthttp, after their handshake.
		split := p.newSplitListener(tln, p.classifyTLS)
		defer split.close()
		h1 = split.h1
	}
	errc := make(chan error, 1)
	go func() { errc <- p.srv.Serve(h1) }()
	select {
	case err := <-errc:
		return fmt.Errorf("proxy: tls: %w", err)
	case <-ctx.Done():
		// Run's shutdown closes this listener too; whichever comes
		// first, Serve returns and open connections drain there.
		tln.Close()
		<-errc
		return nil
	}
}

// onceCloser lets both RunTLS and the server's shutdown close a listener.
type onceCloser struct {
	net.Listener
	once sync.Once
	err  error
}

func (o *onceCloser) Close() error {
	o.once.Do(func() { o.err = o.Listener.Close() })
	return nil
}

// redirectHTTPS answers a plain request with 308 to the same host, path
// and query over https.
func (p *Proxy) redirectHTTPS(ctx *fasthttp.RequestCtx) {
	host := ctx.Request.Header.Host()
	if h, _, err := net.SplitHostPort(string(host)); err == nil {
		host = []byte(h)
		if strings.IndexByte(h, ':') >= 0 {
			host = []byte("[" + h + "]")
		}
	}
	uri := ctx.Request.Header.RequestURI()
	if len(host) == 0 || !validHost(host) || len(uri) == 0 || uri[0] != '/' {
		ctx.Error("pier: https required\n", fasthttp.StatusBadRequest)
		return
	}
	u := make([]byte, 0, 64)
	u = append(u, "https://"...)
	u = append(u, host...)
	if pt := p.cfg.TLS.RedirectPort; pt != 0 && pt != 443 {
		u = append(u, ':')
		u = strconv.AppendInt(u, int64(pt), 10)
	}
	u = append(u, uri...)
	ctx.Response.Header.Set("Location", string(u))
	ctx.SetStatusCode(fasthttp.StatusPermanentRedirect)
	ctx.SetConnectionClose()
}

// validHost keeps a redirect on the host the client named: no userinfo,
// path or other characters that would send it elsewhere.
func validHost(h []byte) bool {
	for _, c := range h {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '-', c == '_', c == '[', c == ']', c == ':':
		default:
			return false
		}
	}
	return true
}
