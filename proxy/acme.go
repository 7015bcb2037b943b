package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ACMEConfig is proxy.tls.acme: certificates the front door gets itself
// from an RFC 8555 CA, through certmagic. Every front door of a cluster
// manages the same names; Storage (the servers' KV) and its lock make one
// of them ask the CA for a name and every one serve the certificate.
type ACMEConfig struct {
	Email      string        `json:"email"`       // the account's contact (optional for Let's Encrypt)
	CA         string        `json:"ca"`          // the CA's directory URL (default: Let's Encrypt's production)
	CARoot     string        `json:"ca_root"`     // PEM roots the CA's own HTTPS is verified with (a private CA such as pebble); default the system's
	Names      []string      `json:"names"`       // the host names to get certificates for
	RenewCheck time.Duration `json:"renew_check"` // how often certificates are checked for renewal, and OCSP staples (default 10m, OCSP 1h)
	Token      string        `json:"token"`       // the API token the agent's KV storage asks with (operator:write); the proxy does not read it
	// Allow bounds the names taken from tag and KV routes with tls=acme:
	// exact names, or *.example.com for any name under example.com.
	// Empty: any name such a route has (the ACL on writing the route,
	// service:write or key:write, is then the bound).
	Allow []string `json:"allow"`
	// Challenges are the ACME challenges answered: http-01 (on the plain
	// listener) and tls-alpn-01 (on the TLS listener) by default, or
	// dns-01 alone (TXT records in the servers' KV, answered by every
	// agent's DNS server; the only challenge a wildcard name can use).
	Challenges []string `json:"challenges"`
	// DisableARI renews by the certificate's lifetime alone (a third
	// before expiry), not when the CA's renewal information (RFC 9773)
	// suggests: for a CA whose suggestions are wrong, or a test CA such as
	// pebble, whose window for a short-lived certificate opens at issuance.
	DisableARI bool `json:"disable_ari"`

	// Storage keeps the account, the certificates and their keys, and
	// locks a name while it is ordered; set by the agent (the servers'
	// KV). Required.
	Storage certmagic.Storage `json:"-"`
}

// Validate reports the first mistake, naming the field under
// proxy.tls.acme.
func (c *ACMEConfig) Validate() error {
	if c.CA != "" {
		u, err := url.Parse(c.CA)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("ca %q: want the CA's directory URL, https://host/path", c.CA)
		}
	}
	if c.Email != "" && (!strings.Contains(c.Email, "@") || strings.ContainsAny(c.Email, " \t\r\n,<>")) {
		return fmt.Errorf("email %q: want an address such as ops@example.com", c.Email)
	}
	if c.CARoot != "" {
		if _, err := LoadCAFile(c.CARoot); err != nil {
			return fmt.Errorf("ca_root: %w", err)
		}
	}
	if c.RenewCheck < 0 {
		return fmt.Errorf("renew_check %s: want a positive duration", c.RenewCheck)
	}
	for i, ch := range c.Challenges {
		switch ch {
		case challengeHTTP, challengeALPN:
		case challengeDNS:
			if len(c.Challenges) > 1 {
				return fmt.Errorf("challenges %q: dns-01 is used alone (certmagic's issuer answers DNS-01 only, once it has a DNS solver)", c.Challenges)
			}
		default:
			return fmt.Errorf("challenges[%d] %q: want http-01, tls-alpn-01 or dns-01", i, ch)
		}
	}
	for i, n := range c.Names {
		if err := c.validName(n); err != nil {
			return fmt.Errorf("names[%d] %q: %w", i, n, err)
		}
	}
	for i, n := range c.Allow {
		if err := validACMEName(strings.TrimPrefix(n, "*.")); err != nil {
			return fmt.Errorf("allow[%d] %q: %w (want a name or *.example.com)", i, n, err)
		}
	}
	return nil
}

// allowed reports whether a name from a route may be managed.
func (c *ACMEConfig) allowed(name string) bool {
	if len(c.Allow) == 0 {
		return true
	}
	for _, a := range c.Allow {
		if suffix, ok := strings.CutPrefix(strings.ToLower(a), "*"); ok {
			if strings.HasSuffix(name, suffix) {
				return true
			}
		} else if strings.EqualFold(a, name) {
			return true
		}
	}
	return false
}

// The challenges of ACMEConfig.Challenges.
const (
	challengeHTTP = "http-01"
	challengeALPN = "tls-alpn-01"
	challengeDNS  = "dns-01"
)

// challenge reports whether ch is answered.
func (c *ACMEConfig) challenge(ch string) bool {
	return len(c.Challenges) == 0 && ch != challengeDNS || slices.Contains(c.Challenges, ch)
}

// dns01 reports whether DNS-01 is the challenge answered.
func (c *ACMEConfig) dns01() bool { return slices.Contains(c.Challenges, challengeDNS) }

// validName is validACMEName, with wildcards (*.example.com) when DNS-01
// is the challenge.
func (c *ACMEConfig) validName(n string) error {
	if rest, ok := strings.CutPrefix(n, "*."); ok && c.dns01() {
		return validACMEName(rest)
	}
	return validACMEName(n)
}

// validACMEName accepts a DNS name an ACME challenge can prove: no IP
// address (RFC 8738 is not offered), no wildcard (those need DNS-01, and
// validName).
func validACMEName(n string) error {
	switch {
	case n == "":
		return errors.New("empty")
	case strings.HasPrefix(n, "*"):
		return errors.New("a wildcard needs the DNS-01 challenge: proxy.tls.acme.challenges: [dns-01]")
	case net.ParseIP(n) != nil:
		return errors.New("an IP address; want a DNS name")
	case len(n) > 253 || !strings.Contains(n, ".") || strings.HasSuffix(n, "."):
		return errors.New("want a fully qualified DNS name such as www.example.com")
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("want a fully qualified DNS name such as www.example.com")
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not allowed in a DNS name", c)
			}
		}
	}
	return nil
}

// acmeManager is the proxy's side of certmagic: the names it manages, the
// challenge answers and the certificates for the TLS listener. cfg is set
// by RunACME, once the listeners' ports are known; before, a handshake for
// a managed name gets the default certificate.
type acmeManager struct {
	conf   ACMEConfig
	static map[string]bool                 // the config's names, always managed
	names  atomic.Pointer[map[string]bool] // static and the names of routes with tls=acme; replaced, never changed
	kick   chan struct{}                   // capacity 1: names changed
	warned map[string]bool                 // route names refused and logged, while their routes last; setRouteNames's, which never runs concurrently
	log    *slog.Logger
	cfg    atomic.Pointer[certmagic.Config]
	iss    atomic.Pointer[certmagic.ACMEIssuer]
	errors prometheus.Counter
	issued prometheus.Counter
	count  prometheus.Gauge // len(names)
}

func newACMEManager(c *ACMEConfig, reg prometheus.Registerer, log *slog.Logger) (*acmeManager, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("proxy.tls.acme.%w", err)
	}
	if c.Storage == nil {
		return nil, errors.New("proxy.tls.acme: no storage (the agent gives the servers' KV)")
	}
	m := &acmeManager{conf: *c, static: map[string]bool{}, kick: make(chan struct{}, 1), warned: map[string]bool{},
		log: log.With("component", "acme")}
	m.conf.Names = slices.Clone(c.Names)
	for _, n := range c.Names {
		m.static[strings.ToLower(n)] = true
	}
	names := maps.Clone(m.static)
	m.names.Store(&names)
	m.errors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pier", Subsystem: "proxy", Name: "acme_errors_total",
		Help: "Failed attempts to obtain or renew a certificate from the ACME CA (the certificate held, if any, keeps serving).",
	})
	m.issued = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "pier", Subsystem: "proxy", Name: "acme_certificates_total",
		Help: "Certificates this front door obtained or renewed from the ACME CA (not those another front door got and this one loaded).",
	})
	m.count = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "pier", Subsystem: "proxy", Name: "acme_names",
		Help: "Names the front door manages certificates for: proxy.tls.acme.names and the hosts of routes with tls=acme.",
	})
	m.count.Set(float64(len(names)))
	if reg != nil {
		for _, col := range []prometheus.Collector{m.errors, m.issued, m.count} {
			if err := reg.Register(col); err != nil {
				return nil, fmt.Errorf("proxy: metrics: %w", err)
			}
		}
	}
	return m, nil
}

// managed reports whether name is one of the configured names or of a
// route's with tls=acme, or is covered by a configured wildcard.
func (m *acmeManager) managed(name string) bool {
	if m == nil {
		return false
	}
	names := *m.names.Load()
	if names[name] {
		return true
	}
	if i := strings.IndexByte(name, '.'); i > 0 && m.conf.dns01() {
		return names["*"+name[i:]]
	}
	return false
}

// setRouteNames takes the hosts of the routes with tls=acme (from tags and
// the KV store; the config's are static) and, when the set changed, wakes
// RunACME. It is called at each rebuild of the route table, never
// concurrently, and does not block. A name that is not a DNS name, or not
// allowed, is logged once and left out: only a route's name is ever
// ordered, never a name a client sends by SNI.
func (m *acmeManager) setRouteNames(hosts []string) {
	next := maps.Clone(m.static)
	refused := map[string]bool{}
	for _, h := range hosts {
		err := m.conf.validName(h)
		if err == nil && !m.conf.allowed(h) {
			err = errors.New("not in proxy.tls.acme.allow")
		}
		if err != nil {
			refused[h] = true
			if !m.warned[h] {
				m.log.Warn("acme: a route's tls=acme name is not managed", "name", h, "err", err)
			}
			continue
		}
		next[h] = true
	}
	m.warned = refused // logged again only if it goes and comes back
	if maps.Equal(next, *m.names.Load()) {
		return
	}
	m.names.Store(&next)
	m.count.Set(float64(len(next)))
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// certificate answers the TLS-ALPN-01 challenge and the certificates of
// managed names; false when it has none for hello.
func (m *acmeManager) certificate(hello *tls.ClientHelloInfo, name string) (*tls.Certificate, bool) {
	cfg := m.cfg.Load()
	if cfg == nil {
		return nil, false
	}
	if !m.managed(name) && !slices.Contains(hello.SupportedProtos, acmeALPN) {
		return nil, false
	}
	c, err := cfg.GetCertificate(hello)
	if err != nil || c == nil {
		return nil, false
	}
	return c, true
}

// acmeALPN is TLS-ALPN-01's protocol (RFC 8737).
const acmeALPN = "acme-tls/1"

const acmeChallengePrefix = "/.well-known/acme-challenge/"

// challenge answers an HTTP-01 challenge on the plain listener; false when
// the request is not one (it goes on to the routes).
func (m *acmeManager) challenge(ctx *fasthttp.RequestCtx) bool {
	if !bytes.HasPrefix(ctx.Path(), []byte(acmeChallengePrefix)) {
		return false
	}
	iss := m.iss.Load()
	if iss == nil {
		return false
	}
	answered := false
	fasthttpadaptor.NewFastHTTPHandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answered = iss.HandleHTTPChallenge(w, r)
	})(ctx)
	return answered
}

// RunACME gets and renews the certificates of proxy.tls.acme until ctx
// ends. httpAddr and tlsAddr are the front door's listeners, where the
// CA's challenges arrive: certmagic would otherwise open its own. Without
// ACME in the config it returns at once.
func (p *Proxy) RunACME(ctx context.Context, httpAddr, tlsAddr net.Addr) error {
	m := p.acme
	if m == nil {
		return nil
	}
	zl := zap.New(slogCore{log: m.log})
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		RenewCheckInterval: m.conf.RenewCheck,
		OCSPCheckInterval:  m.conf.RenewCheck,
		Logger:             zl,
	})
	defer cache.Stop()
	cfg = certmagic.New(cache, certmagic.Config{
		Storage:    m.conf.Storage,
		Logger:     zl,
		DisableARI: m.conf.DisableARI,
		OnEvent:    m.event,
	})
	tmpl := certmagic.ACMEIssuer{
		CA:     m.conf.CA,
		Email:  m.conf.Email,
		Agreed: true,
		Logger: zl,
	}
	if tmpl.CA == "" {
		tmpl.CA = certmagic.LetsEncryptProductionCA
	}
	if m.conf.CARoot != "" {
		roots, err := LoadCAFile(m.conf.CARoot)
		if err != nil {
			return fmt.Errorf("proxy.tls.acme.ca_root: %w", err)
		}
		tmpl.TrustedRoots = roots
	}
	// The challenges are answered by the front door's own listeners:
	// pointing certmagic's solvers at them makes their bind fail, which
	// certmagic takes as "served elsewhere".
	if a, ok := httpAddr.(*net.TCPAddr); ok && m.conf.challenge(challengeHTTP) {
		tmpl.ListenHost, tmpl.AltHTTPPort = a.IP.String(), a.Port
	} else {
		tmpl.DisableHTTPChallenge = true
	}
	if a, ok := tlsAddr.(*net.TCPAddr); ok && m.conf.challenge(challengeALPN) {
		tmpl.AltTLSALPNPort = a.Port
		if tmpl.ListenHost != a.IP.String() {
			tmpl.ListenHost = "" // both listeners' hosts differ: leave the solvers to fail on the wildcard bind
		}
	} else {
		tmpl.DisableTLSALPNChallenge = true
	}
	if m.conf.dns01() {
		tmpl.DNS01Solver = dnsSolver{m.conf.Storage}
	}
	iss := certmagic.NewACMEIssuer(cfg, tmpl)
	cfg.Issuers = []certmagic.Issuer{iss}
	m.iss.Store(iss)
	m.cfg.Store(cfg)
	defer m.cfg.Store(nil)
	defer m.iss.Store(nil)
	m.manage(ctx, cache, cfg)
	return nil
}

// manage keeps certmagic managing the names of m.names until ctx ends.
// Each name gets one goroutine at a time (get): it loads the name's
// certificate from the storage into certmagic's cache, or, when the
// storage has none, orders one (one front door at a time, under the
// storage's lock; certmagic retries a failed order with backoff for up to
// 30 days, logged and counted in event). ManageAsync is not used: it
// starts a new order job at each call, and each extra job would wait on
// the name's lock for as long as the first retries. Once cached, renewals
// and OCSP are certmagic's maintenance. A name whose goroutine ended
// without a certificate (no server reachable: a client that has not
// joined yet) gets another (1 s, doubling to a minute, sooner when the
// names change). Each name is managed under a context of its own: when
// its route goes, the context ends (an order in progress, with its
// retries, is abandoned) and its certificate leaves the cache (no longer
// served nor renewed); the storage keeps it, so a route that comes back is
// served again without an order while the certificate lasts.
func (m *acmeManager) manage(ctx context.Context, cache *certmagic.Cache, cfg *certmagic.Config) {
	type managed struct {
		ctx    context.Context
		cancel context.CancelFunc
	}
	managing := map[string]managed{}
	dropped := map[string]bool{} // names whose route went: an order that was under way may still cache one
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		busy = map[string]bool{} // names with a goroutine
	)
	defer func() {
		for _, mc := range managing {
			mc.cancel()
		}
		wg.Wait()
	}()
	get := func(ctx context.Context, n string) {
		defer wg.Done()
		defer func() {
			mu.Lock()
			delete(busy, n)
			mu.Unlock()
		}()
		_, err := cfg.CacheManagedCertificate(ctx, n)
		if errors.Is(err, fs.ErrNotExist) {
			if err = cfg.ObtainCertAsync(ctx, n); err == nil { // failures are logged and counted by event
				_, err = cfg.CacheManagedCertificate(ctx, n)
			}
		} else if err != nil && ctx.Err() == nil {
			m.errors.Inc()
			m.log.Error("acme: loading the certificate from the storage failed; trying again", "name", n, "err", err)
		}
	}
	wait := time.Second
	for {
		want := *m.names.Load()
		var gone []certmagic.SubjectIssuer
		for n, mc := range managing {
			if !want[n] {
				mc.cancel()
				delete(managing, n)
				dropped[n] = true
				m.log.Info("acme: the name has no route with tls=acme any more: its certificate is neither served nor renewed", "name", n)
			}
		}
		for n := range dropped {
			if want[n] {
				delete(dropped, n)
			} else if len(cache.AllMatchingCertificates(n)) > 0 {
				gone = append(gone, certmagic.SubjectIssuer{Subject: n})
			}
		}
		if len(gone) > 0 {
			cache.RemoveManaged(gone)
		}
		var missing []string
		for n := range want {
			if len(cache.AllMatchingCertificates(n)) == 0 {
				missing = append(missing, n)
			}
		}
		slices.Sort(missing)
		if len(missing) > 0 {
			if err := m.reachable(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				m.errors.Inc()
				m.log.Error("acme: the certificate storage cannot be reached; the front door serves what it holds, trying again", "in", wait, "err", err)
			} else {
				for _, n := range missing {
					mc, ok := managing[n]
					if !ok {
						mc.ctx, mc.cancel = context.WithCancel(ctx)
						managing[n] = mc
					}
					mu.Lock()
					start := !busy[n]
					busy[n] = true
					mu.Unlock()
					if start {
						wg.Add(1)
						go get(mc.ctx, n)
					}
				}
			}
		}
		var retry <-chan time.Time
		if len(missing) > 0 {
			retry = time.After(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
			wait = time.Second
		case <-retry:
			wait = min(2*wait, time.Minute)
		}
	}
}

// acmeRouteNames hands the hosts of rt's tag and KV routes with tls=acme
// to the ACME manager; without proxy.tls.acme such a route is served
// without a certificate of its own, which is logged once per host.
func (p *Proxy) acmeRouteNames(rt *routeTable) {
	var hosts []string
	for _, r := range rt.all {
		if !r.ACME || r.Host == "" {
			continue
		}
		if p.acme == nil {
			if !p.acmeWarned[r.Host] {
				if p.acmeWarned == nil {
					p.acmeWarned = map[string]bool{}
				}
				p.acmeWarned[r.Host] = true
				p.log.Warn("a route asks for tls=acme but proxy.tls.acme is not configured: no certificate is ordered for it", "host", r.Host, "source", r.Source)
			}
			continue
		}
		hosts = append(hosts, r.Host)
	}
	if p.acme != nil {
		p.acme.setRouteNames(hosts)
	}
}

// reachable reports an error when the storage cannot be read.
func (m *acmeManager) reachable(ctx context.Context) error {
	_, err := m.conf.Storage.Load(ctx, "pier-probe")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// event logs and counts certmagic's outcomes.
func (m *acmeManager) event(_ context.Context, event string, data map[string]any) error {
	switch event {
	case "cert_failed":
		m.errors.Inc()
		m.log.Error("acme: obtaining or renewing a certificate failed; the certificate held, if any, keeps serving",
			"identifier", data["identifier"], "renewal", data["renewal"], "remaining", data["remaining"], "err", data["error"])
	case "cert_obtained":
		m.issued.Inc()
		m.log.Info("acme: certificate obtained", "identifier", data["identifier"], "renewal", data["renewal"])
	}
	return nil
}

// slogCore hands certmagic's zap logs to the agent's slog logger.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
}

func (c slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.InfoLevel }

func (c slogCore) With(fs []zapcore.Field) zapcore.Core {
	return slogCore{log: c.log, fields: append(slices.Clip(c.fields), fs...)}
}

func (c slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c slogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	args := make([]any, 0, 2*len(keys)+2)
	if e.LoggerName != "" {
		args = append(args, "logger", e.LoggerName)
	}
	for _, k := range keys {
		args = append(args, k, enc.Fields[k])
	}
	lvl := slog.LevelInfo
	switch {
	case e.Level >= zapcore.ErrorLevel:
		lvl = slog.LevelError
	case e.Level >= zapcore.WarnLevel:
		lvl = slog.LevelWarn
	}
	c.log.Log(context.Background(), lvl, "acme: "+e.Message, args...)
	return nil
}

func (c slogCore) Sync() error { return nil }

// nextProtos adds TLS-ALPN-01's protocol, last, so that only the CA's
// validator, which offers nothing else, gets it.
func (s *certStore) nextProtos(protos []string) []string {
	if s.acme == nil {
		return protos
	}
	return append(protos, acmeALPN)
}
