package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/pier-dev/pier/lb"
	"github.com/pier-dev/pier/proxy"
	"github.com/pier-dev/pier/registry"
)

// devProxyAddr is where -dev serves the front door, as the design says.
const devProxyAddr = "127.0.0.1:8080"

// proxySettings is the agent's front door after defaults, config files and
// flags; nil in agentConfig means the agent runs no proxy.
type proxySettings struct {
	Addr    string
	addrSet bool // a config file or flag chose Addr
	devAddr bool // the address is -dev's default, not one the user chose
	lb      lb.Config
	proxy   proxy.Config
	tcp     proxy.TCPConfig // TCP and SNI passthrough routes (proxy.tcp) and their timeouts
	TLSAddr string          // the HTTPS listener when proxy.TLS is set (default :443)
	acme    []acmeRoute     // routes with tls: acme (agent_acme_config.go)
}

func newProxySettings() *proxySettings {
	return &proxySettings{Addr: ":80", lb: lb.DefaultConfig(), proxy: proxy.DefaultConfig(), tcp: proxy.DefaultTCPConfig()}
}

// proxySection is the config file's proxy section: the keys of lb.Config
// and proxy.Config (their json names), read straight into the agent's
// settings, and the few the agent itself reads. Routes and certificates
// from several files add up; every other key overrides an earlier file.
type proxySection struct {
	Addr      *string          `json:"addr"`
	Retries   *int             `json:"retries"` // tries said the other way: retries: 2 is tries: 3
	Routes    []proxy.Route    `json:"routes"`
	AccessLog *accessLogFile   `json:"access_log"` // combined, json or off (default off)
	TLS       *proxyTLSSection `json:"tls"`        // HTTPS on the front door (default none)
	TCP       []proxy.TCPRoute `json:"tcp"`        // TCP and SNI passthrough routes; added up across files
	LB        *lb.Config       `json:",inline"`
	Proxy     *proxy.Config    `json:",inline"`
	TCPOpts   *proxy.TCPConfig `json:",inline"`
}

// proxyTLSSection is proxy.tls: proxy.TLSConfig's keys and the listener.
type proxyTLSSection struct {
	Addr *string          `json:"addr"` // the HTTPS listener (default ":443")
	TLS  *proxy.TLSConfig `json:",inline"`
}

// accessLogFile is proxy.access_log. YAML reads a bare off (or on) as a
// boolean, so booleans are taken too: false is off, true is combined.
type accessLogFile string

func (a *accessLogFile) UnmarshalJSON(b []byte) error {
	var on bool
	if json.Unmarshal(b, &on) == nil {
		*a = proxy.AccessLogOff
		if on {
			*a = proxy.AccessLogCombined
		}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want combined, json or off")
	}
	switch s {
	case proxy.AccessLogCombined, proxy.AccessLogJSON, proxy.AccessLogOff:
	default:
		return fmt.Errorf("%q: want combined, json or off", s)
	}
	*a = accessLogFile(s)
	return nil
}

// mergeProxy applies a config file's proxy section.
func (c *agentConfig) mergeProxy(raw []byte) error {
	if isNull(raw) {
		return nil
	}
	if c.Proxy == nil {
		c.Proxy = newProxySettings()
	}
	p := c.Proxy
	hadTLS := p.proxy.TLS != nil
	if !hadTLS {
		p.proxy.TLS = &proxy.TLSConfig{}
	}
	// The decoder would reuse the slice's array: keep the earlier files'.
	certs := p.proxy.TLS.Certs
	p.proxy.TLS.Certs = nil
	sec := proxySection{LB: &p.lb, Proxy: &p.proxy, TLS: &proxyTLSSection{TLS: p.proxy.TLS}, TCPOpts: &p.tcp}
	raw, err := p.takeACMERoutes(raw)
	if err != nil {
		return err
	}
	if err := registry.DecodeConfig("proxy", raw, &sec); err != nil {
		return err
	}
	var given struct {
		Tries jsontext.Value `json:"tries"`
		TLS   jsontext.Value `json:"tls"`
	}
	if err := jsonv2.Unmarshal(raw, &given, jsonv2.MatchCaseInsensitiveNames(true)); err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	if sec.Addr != nil {
		p.Addr, p.addrSet, p.devAddr = *sec.Addr, true, false
	}
	if err := p.proxy.HTTP2.Validate(); err != nil {
		return err
	}
	if err := proxy.ValidateEngine(p.proxy.Engine); err != nil {
		return fmt.Errorf("proxy.%w", err)
	}
	for i := range sec.Routes {
		rt := &sec.Routes[i]
		if err := rt.Validate(); err != nil {
			return fmt.Errorf("proxy.routes[%d]: %w", i, err)
		}
		if rt.TLSCAFile != "" {
			// Read here too, so that pier validate catches a bundle the
			// agent could not start with.
			if _, err := proxy.LoadCAFile(rt.TLSCAFile); err != nil {
				return fmt.Errorf("proxy.routes[%d].tls_ca_file: %w", i, err)
			}
		}
		p.proxy.Routes = append(p.proxy.Routes, *rt)
	}
	for i := range sec.TCP {
		if err := sec.TCP[i].Validate(); err != nil {
			return fmt.Errorf("proxy.tcp[%d].%w", len(p.tcp.Routes), err)
		}
		p.tcp.Routes = append(p.tcp.Routes, sec.TCP[i])
	}
	if sec.AccessLog != nil {
		p.proxy.AccessLog = string(*sec.AccessLog)
	}
	if sec.Retries != nil {
		if len(given.Tries) > 0 {
			return fmt.Errorf("proxy: give tries or retries, not both")
		}
		p.proxy.Tries = *sec.Retries + 1
	}
	if isNull(given.TLS) {
		if !hadTLS {
			p.proxy.TLS = nil // no HTTPS unless a file has a tls section
		}
		return nil
	}
	t := p.proxy.TLS
	if !hadTLS {
		p.TLSAddr = ":443"
	}
	if a := sec.TLS.Addr; a != nil {
		if _, _, err := net.SplitHostPort(*a); err != nil {
			return fmt.Errorf("proxy.tls.addr %q: want host:port or :port", *a)
		}
		p.TLSAddr = *a
	}
	var tlsGiven struct {
		RedirectPort *int `json:"redirect_port"`
	}
	if err := jsonv2.Unmarshal(given.TLS, &tlsGiven, jsonv2.MatchCaseInsensitiveNames(true)); err != nil {
		return fmt.Errorf("proxy.tls: %w", err)
	}
	if rp := tlsGiven.RedirectPort; rp != nil && (*rp < 1 || *rp > 65535) {
		return fmt.Errorf("proxy.tls.redirect_port %d: want 1-65535", *rp)
	}
	for i, cf := range t.Certs {
		if cf.CertFile == "" || cf.KeyFile == "" {
			return fmt.Errorf("proxy.tls.certs[%d]: cert_file and key_file are both required", i)
		}
	}
	t.Certs = append(certs, t.Certs...)
	return nil
}

// resolveProxy applies -proxy-addr and -dev's default front door.
func (c *agentConfig) resolveProxy(flagAddr string, flagSet bool) error {
	switch {
	case flagSet:
		if c.Proxy == nil {
			c.Proxy = newProxySettings()
		}
		c.Proxy.Addr, c.Proxy.addrSet, c.Proxy.devAddr = flagAddr, true, false
	case c.Dev && (c.Proxy == nil || !c.Proxy.addrSet):
		if c.Proxy == nil {
			c.Proxy = newProxySettings()
		}
		c.Proxy.Addr, c.Proxy.devAddr = devProxyAddr, true
	}
	if c.Proxy == nil {
		return nil
	}
	if t := c.Proxy.proxy.TLS; t != nil && len(t.Certs) == 0 && t.ACME == nil {
		return errors.New("proxy.tls: at least one entry in certs, or acme, is required")
	}
	if err := c.Proxy.resolveACME(); err != nil {
		return err
	}
	for i, r := range c.Proxy.tcp.Routes {
		if r.Listen == "" && c.Proxy.proxy.TLS == nil {
			return fmt.Errorf("proxy.tcp[%d].listen: required for sni %q unless proxy.tls is set (the TLS listener it would share)", i, r.SNI)
		}
	}
	host, port, err := net.SplitHostPort(c.Proxy.Addr)
	if err != nil {
		return usageError{fmt.Sprintf("-proxy-addr %q: want host:port or :port", c.Proxy.Addr)}
	}
	if host != "" && net.ParseIP(host) == nil {
		return usageError{fmt.Sprintf("-proxy-addr %q: %q is not an IP address", c.Proxy.Addr, host)}
	}
	var pn int
	if _, err := fmt.Sscan(port, &pn); err != nil || pn < 0 || pn > 65535 {
		return usageError{fmt.Sprintf("-proxy-addr %q: port out of range (0-65535; 0: any free port)", c.Proxy.Addr)}
	}
	return nil
}

// frontDoor is the agent's proxy with its balancer and listener.
type frontDoor struct {
	bal   *lb.Balancer
	proxy *proxy.Proxy
	ln    net.Listener
	tlsLn net.Listener // nil: no HTTPS; with SNI passthrough in front of TLS
	tcp   *proxy.TCPProxy
}

// newFrontDoor builds the balancer and proxy and opens the listener. With
// -dev's default address taken, it takes any free port instead (the log
// says which), so that several development agents can run side by side.
func newFrontDoor(s *proxySettings, reg *registry.Registry, log *slog.Logger) (*frontDoor, error) {
	lc := s.lb
	lc.Source = reg
	lc.Logger = log.With("component", "lb")
	bal, err := lb.New(lc)
	if err != nil {
		return nil, err
	}
	pc := s.proxy
	pc.Balancer = bal
	pc.Logger = log.With("component", "proxy")
	var tlsLn net.Listener
	if pc.TLS != nil {
		if len(pc.TLS.Certs) == 0 && pc.TLS.ACME == nil {
			return nil, fmt.Errorf("proxy.tls: at least one entry in certs, or acme, is required")
		}
		if tlsLn, err = net.Listen("tcp", s.TLSAddr); err != nil {
			return nil, fmt.Errorf("proxy: tls: %w", err)
		}
		t := *pc.TLS
		if t.RedirectPort == 0 {
			t.RedirectPort = tlsLn.Addr().(*net.TCPAddr).Port
		}
		pc.TLS = &t
	}
	prx, err := proxy.New(pc)
	if err != nil {
		if tlsLn != nil {
			tlsLn.Close()
		}
		return nil, err
	}
	tc := s.tcp
	tc.TagHost, _, _ = net.SplitHostPort(s.Addr)
	tcp, err := prx.NewTCP(tc)
	if err != nil {
		if tlsLn != nil {
			tlsLn.Close()
		}
		return nil, err
	}
	if tlsLn != nil {
		tlsLn = tcp.WrapTLS(tlsLn)
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil && s.devAddr && errors.Is(err, syscall.EADDRINUSE) {
		pc.Logger.Warn("the development proxy address is taken; using a free port", "addr", s.Addr)
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		if tlsLn != nil {
			tlsLn.Close()
		}
		tcp.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return &frontDoor{bal: bal, proxy: prx, ln: ln, tlsLn: tlsLn, tcp: tcp}, nil
}
