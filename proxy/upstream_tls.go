package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/pier-dev/pier/lb"
)

// tlsKey is a route's upstream TLS settings as written.
type tlsKey struct {
	serverName string
	skipVerify bool
	caFile     string
}

// tlsCache interns upstream TLS settings: every route with equal settings
// gets the same *lb.TLS, across route rebuilds, because a backend keeps one
// client (and pool of connections) per *lb.TLS it is reached with. A CA
// bundle is read when its settings are first seen and kept for the life of
// the proxy: rebuilds happen at every catalog change and must not reread
// files; a changed bundle takes effect at restart. Errors are not kept, so
// a KV route whose bundle was missing is tried again at the next rebuild.
// Guarded by Proxy.mu (New runs before anything else can use it).
type tlsCache map[tlsKey]*lb.TLS

// upstream returns the interned TLS settings of r, nil for a plain route.
// The error names the field, for the caller to name the route.
func (c tlsCache) upstream(r *Route) (*lb.TLS, error) {
	if !r.TLS {
		return nil, nil
	}
	k := tlsKey{r.TLSServerName, r.TLSSkipVerify, r.TLSCAFile}
	if t := c[k]; t != nil {
		return t, nil
	}
	t := &lb.TLS{ServerName: r.TLSServerName, SkipVerify: r.TLSSkipVerify}
	if r.TLSCAFile != "" {
		pool, err := LoadCAFile(r.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls_ca_file: %w", err)
		}
		t.RootCAs = pool
	}
	if c != nil {
		c[k] = t
	}
	return t, nil
}

// LoadCAFile reads a PEM bundle of certificates to verify instances with.
// A file without one certificate in it is an error rather than a pool
// that trusts nothing, which would fail every request at run time.
func LoadCAFile(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, nil
}

// tlsMismatch reports whether err is a TLS handshake with an instance
// failing because the two sides disagree: its certificate does not verify,
// it does not speak TLS at all, or it refused ours with an alert. Such a
// failure says the route's settings are wrong for the instance, not that
// the instance is unwell: it is not counted against the instance's health
// (which would also take it from routes that reach it over plain HTTP),
// but the request may still try another instance, since nothing of it was
// sent.
func tlsMismatch(err error) bool {
	var ve *tls.CertificateVerificationError
	var ha x509.HostnameError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var rh tls.RecordHeaderError
	var al tls.AlertError
	return errors.As(err, &ve) || errors.As(err, &ha) || errors.As(err, &ua) || errors.As(err, &ci) ||
		errors.As(err, &rh) || errors.As(err, &al)
}

// certWarnEvery bounds the warnings about TLS mismatches: every request to
// such an instance fails the same way, and one line per request would bury
// everything else in the log.
const certWarnEvery = 10 * time.Second

// certWarning is the time of the last warning about a TLS mismatch.
type certWarning struct{ last atomic.Int64 }

// warnTLS logs a TLS mismatch with an instance, at most once every
// certWarnEvery.
func (p *Proxy) warnTLS(r *route, b *lb.Backend, err error) {
	if p.certWarn.due() {
		p.log.Warn("TLS to an instance failed: it does not match the route's TLS settings (logged at most every "+certWarnEvery.String()+")",
			"service", r.Service, "route", r.Host+r.Path, "addr", b.Addr(), "err", err)
	}
}

func (w *certWarning) due() bool {
	now := time.Now().UnixNano()
	last := w.last.Load()
	return now-last >= int64(certWarnEvery) && w.last.CompareAndSwap(last, now)
}
