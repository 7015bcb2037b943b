package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"syscall"
	"time"

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
	TLSAddr string // the HTTPS listener when proxy.TLS is set (default :443)
}

func newProxySettings() *proxySettings {
	return &proxySettings{Addr: ":80", lb: lb.DefaultConfig(), proxy: proxy.DefaultConfig()}
}

// proxyFile is the config file's proxy section. Durations are strings such
// as "10s"; routes from several files add up.
type proxyFile struct {
	Addr           *string
	Routes         []proxyRouteFile
	Tags           *bool   // route by urlprefix- service tags (default true)
	IncludeWarning *bool   // warning instances take traffic too (default false)
	MaxFails       *int    // nginx's max_fails (default 1; 0: never take an instance out)
	FailTimeout    *string // nginx's fail_timeout (default 10s)
	Tries          *int    // attempts of one request on different instances (default 3)
	Retries        *int    // the same said the other way: retries: 2 is tries: 3
	TryTimeout     *string // no new attempt after this (default 10s)
	ConnectTimeout *string // to an instance (default 5s)
	ReadTimeout    *string // longest wait for the next byte from an instance (default 60s)
	WriteTimeout   *string // longest wait to send the next bytes to an instance (default 60s)
	KeepAlive      *string // idle keep-alive connections to an instance close after (default 10s)
	HeaderTimeout  *string // a client's request headers (default 10s)
	BodyTimeout    *string // a client's whole request body (default 1h)
	ClientTimeout  *string // writing a whole response to a client (default none)
	IdleTimeout    *string // a client's idle keep-alive connection (default 75s)
	MaxHeaderSize  *int    // bytes (default 8192)
	MaxBodySize    *int64  // bytes (default 0: no limit)
	MaxConns       *int    // client connections at once (default 10000)

	AccessLog *accessLogFile // combined, json or off (default off)
	TLS       *proxyTLSFile  // HTTPS on the front door (default none)
}

// proxyTLSFile is proxy.tls. Certificates from several files add up.
type proxyTLSFile struct {
	Addr         *string // the HTTPS listener (default ":443")
	Certs        []proxyCertFile
	RedirectHTTP *bool // the plain listener answers 308 to https (default false)
	RedirectPort *int  // the port put in redirects (default: the HTTPS listener's)
}

type proxyCertFile struct {
	CertFile string
	KeyFile  string
}

// mergeProxyTLS applies a config file's proxy.tls section.
func (p *proxySettings) mergeProxyTLS(tf *proxyTLSFile) error {
	if tf == nil {
		return nil
	}
	if p.proxy.TLS == nil {
		p.proxy.TLS, p.TLSAddr = &proxy.TLSConfig{}, ":443"
	}
	t := p.proxy.TLS
	if tf.Addr != nil {
		if _, _, err := net.SplitHostPort(*tf.Addr); err != nil {
			return fmt.Errorf("proxy.tls.addr %q: want host:port or :port", *tf.Addr)
		}
		p.TLSAddr = *tf.Addr
	}
	for i, c := range tf.Certs {
		if c.CertFile == "" || c.KeyFile == "" {
			return fmt.Errorf("proxy.tls.certs[%d]: cert_file and key_file are both required", i)
		}
		t.Certs = append(t.Certs, proxy.CertFiles{CertFile: c.CertFile, KeyFile: c.KeyFile})
	}
	if tf.RedirectHTTP != nil {
		t.RedirectHTTP = *tf.RedirectHTTP
	}
	if tf.RedirectPort != nil {
		if *tf.RedirectPort < 1 || *tf.RedirectPort > 65535 {
			return fmt.Errorf("proxy.tls.redirect_port %d: want 1-65535", *tf.RedirectPort)
		}
		t.RedirectPort = *tf.RedirectPort
	}
	return nil
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
		return fmt.Errorf("proxy.access_log: want combined, json or off")
	}
	switch s {
	case proxy.AccessLogCombined, proxy.AccessLogJSON, proxy.AccessLogOff:
	default:
		return fmt.Errorf("proxy.access_log %q: want combined, json or off", s)
	}
	*a = accessLogFile(s)
	return nil
}

type proxyRouteFile struct {
	Host        string
	Path        string
	Service     string
	Port        string // a named port of the service (one of its Ports)
	Strip       string
	Prepend     string
	MaxFails    *int
	FailTimeout string

	TLS           bool   // reach the instances over HTTPS
	TLSSkipVerify bool   // accept any certificate
	TLSServerName string // SNI and the name verified (default: the instance's address)
	TLSCAFile     string // PEM bundle to verify instances with (default: the system's roots)
}

// mergeProxy applies a config file's proxy section.
func (c *agentConfig) mergeProxy(pf *proxyFile) error {
	if pf == nil {
		return nil
	}
	if c.Proxy == nil {
		c.Proxy = newProxySettings()
	}
	p := c.Proxy
	if pf.Addr != nil {
		p.Addr, p.addrSet, p.devAddr = *pf.Addr, true, false
	}
	for i, r := range pf.Routes {
		rt := proxy.Route{Host: r.Host, Path: r.Path, Service: r.Service, Port: r.Port, Strip: r.Strip, Prepend: r.Prepend, MaxFails: r.MaxFails,
			TLS: r.TLS, TLSSkipVerify: r.TLSSkipVerify, TLSServerName: r.TLSServerName, TLSCAFile: r.TLSCAFile}
		if r.FailTimeout != "" {
			d, err := time.ParseDuration(r.FailTimeout)
			if err != nil || d < 0 {
				return fmt.Errorf("proxy.routes[%d].fail_timeout: invalid duration %q", i, r.FailTimeout)
			}
			rt.FailTimeout = d
		}
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
		p.proxy.Routes = append(p.proxy.Routes, rt)
	}
	setBool := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	setInt := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	setBool(&p.proxy.Tags, pf.Tags)
	setBool(&p.lb.IncludeWarning, pf.IncludeWarning)
	if pf.AccessLog != nil {
		p.proxy.AccessLog = string(*pf.AccessLog)
	}
	if err := p.mergeProxyTLS(pf.TLS); err != nil {
		return err
	}
	setInt(&p.proxy.MaxFails, pf.MaxFails)
	setInt(&p.proxy.Tries, pf.Tries)
	if pf.Retries != nil {
		if pf.Tries != nil {
			return fmt.Errorf("proxy: give tries or retries, not both")
		}
		p.proxy.Tries = *pf.Retries + 1
	}
	setInt(&p.proxy.MaxHeaderSize, pf.MaxHeaderSize)
	setInt(&p.proxy.MaxConns, pf.MaxConns)
	if pf.MaxBodySize != nil {
		p.proxy.MaxBodySize = *pf.MaxBodySize
	}
	for _, d := range []struct {
		key string
		src *string
		dst *time.Duration
	}{
		{"fail_timeout", pf.FailTimeout, &p.proxy.FailTimeout},
		{"try_timeout", pf.TryTimeout, &p.proxy.TryTimeout},
		{"connect_timeout", pf.ConnectTimeout, &p.lb.ConnectTimeout},
		{"read_timeout", pf.ReadTimeout, &p.lb.ReadTimeout},
		{"write_timeout", pf.WriteTimeout, &p.lb.WriteTimeout},
		{"keep_alive", pf.KeepAlive, &p.lb.IdleConnTimeout},
		{"header_timeout", pf.HeaderTimeout, &p.proxy.HeaderTimeout},
		{"body_timeout", pf.BodyTimeout, &p.proxy.BodyTimeout},
		{"client_timeout", pf.ClientTimeout, &p.proxy.WriteTimeout},
		{"idle_timeout", pf.IdleTimeout, &p.proxy.IdleTimeout},
	} {
		if d.src == nil {
			continue
		}
		v, err := time.ParseDuration(*d.src)
		if err != nil || v < 0 {
			return fmt.Errorf("proxy.%s: invalid duration %q", d.key, *d.src)
		}
		*d.dst = v
	}
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
	if t := c.Proxy.proxy.TLS; t != nil && len(t.Certs) == 0 {
		return errors.New("proxy.tls: at least one entry in certs is required")
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
	tlsLn net.Listener // nil: no HTTPS
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
		if len(pc.TLS.Certs) == 0 {
			return nil, fmt.Errorf("proxy.tls: at least one entry in certs is required")
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
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil && s.devAddr && errors.Is(err, syscall.EADDRINUSE) {
		pc.Logger.Warn("the development proxy address is taken; using a free port", "addr", s.Addr)
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		if tlsLn != nil {
			tlsLn.Close()
		}
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return &frontDoor{bal: bal, proxy: prx, ln: ln, tlsLn: tlsLn}, nil
}
