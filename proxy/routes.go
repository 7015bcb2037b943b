package proxy

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/pier-dev/pier/lb"
)

// Route sends requests whose host and path match to a service.
type Route struct {
	Host        string        `json:"host"`         // "" matches any host; otherwise compared without port, case-insensitively
	Path        string        `json:"path"`         // path prefix, "/" when empty; "/api" matches /api and /api/x but not /apix
	Service     string        `json:"service"`      // required
	Port        string        `json:"port"`         // a named port of a multi-port service (its Ports); "": the default port
	Strip       string        `json:"strip"`        // prefix removed from the path before it is sent (the seed's /api/(.*) -> /$1)
	Prepend     string        `json:"prepend"`      // prefix added to the path after Strip
	MaxFails    *int          `json:"max_fails"`    // passive health: nil takes the proxy's MaxFails
	FailTimeout time.Duration `json:"fail_timeout"` // passive health: 0 takes the proxy's FailTimeout

	// Upstream TLS: instances are reached over HTTPS. The certificate is
	// verified against TLSCAFile, or the system's roots, for the name
	// TLSServerName, or the instance's address when it is empty.
	TLS           bool   `json:"tls"`
	TLSSkipVerify bool   `json:"tls_skip_verify"` // accept any certificate
	TLSServerName string `json:"tls_server_name"` // SNI and the name verified
	TLSCAFile     string `json:"tls_ca_file"`     // PEM bundle to verify instances with

	// Failover sends to other datacenters' instances while this one has
	// none (failover.go); nil: never.
	Failover *Failover `json:"failover"`
	// gRPC (grpc.go): Proto "grpc" sends the route's requests to the
	// instances over HTTP/2 (h2c, or TLS with TLS), streams and trailers
	// as they come. GRPCIdempotent names the methods, separated by
	// commas ("/pkg.Svc/Get", or "/pkg.Svc/" for all of a service's), that
	// may be sent to another instance after one answered UNAVAILABLE.
	Proto          string `json:"proto"`           // "" or "http": HTTP/1.1 to the instances; "grpc"
	GRPCIdempotent string `json:"grpc_idempotent"` // only with proto: grpc

	// ACME: the route's host gets its certificate from proxy.tls.acme
	// (tls: acme in a KV route, tls=acme in a tag; a config route's
	// host is one of proxy.tls.acme's names already).
	ACME bool `json:"-"`

	Source string `json:"-"` // "config", "kv" or "tag"; set by the proxy
	Key    string `json:"-"` // for a KV route, its key; set by the proxy
}

// Validate reports the first mistake in r, naming the route.
func (r *Route) Validate() error {
	if r.Failover != nil {
		if err := r.Failover.validate(r); err != nil {
			return err
		}
	}
	switch {
	case r.Service == "":
		return fmt.Errorf("route %s%s: a service is required", r.Host, r.Path)
	case r.Path != "" && r.Path[0] != '/':
		return fmt.Errorf("route %s%s: the path must start with /", r.Host, r.Path)
	case r.Strip != "" && r.Strip[0] != '/':
		return fmt.Errorf("route %s%s: strip must start with /", r.Host, r.Path)
	case r.Prepend != "" && r.Prepend[0] != '/':
		return fmt.Errorf("route %s%s: prepend must start with /", r.Host, r.Path)
	case strings.ContainsFunc(r.Port, func(c rune) bool { return c <= ' ' || c == 0x7f }):
		return fmt.Errorf("route %s%s: port %q: want the name of one of the service's Ports", r.Host, r.Path, r.Port)
	case strings.ContainsAny(r.Host, "/ "):
		return fmt.Errorf("route %q: a host has no / or space", r.Host)
	case r.MaxFails != nil && *r.MaxFails < 0, r.FailTimeout < 0:
		return fmt.Errorf("route %s%s: max_fails and fail_timeout must not be negative", r.Host, r.Path)
	case !r.TLS && (r.TLSSkipVerify || r.TLSServerName != "" || r.TLSCAFile != ""):
		// Said without tls: true, these would be silently ignored and the
		// route would speak plain HTTP to an instance the writer meant to
		// reach over TLS.
		return fmt.Errorf("route %s%s: tls_skip_verify, tls_server_name and tls_ca_file need tls: true", r.Host, r.Path)
	case r.TLSSkipVerify && r.TLSCAFile != "":
		return fmt.Errorf("route %s%s: tls_ca_file is not used with tls_skip_verify: give one", r.Host, r.Path)
	case strings.ContainsAny(r.TLSServerName, "/: "):
		return fmt.Errorf("route %s%s: tls_server_name %q: want a host name, without port", r.Host, r.Path, r.TLSServerName)
	}
	return r.validateGRPC()
}

// route is a Route ready for matching.
type route struct {
	Route
	path        []byte
	strip       []byte
	prepend     []byte
	maxFails    int
	failTimeout time.Duration
	stats       *routeStats // metrics children, nil without metrics
	tls         *lb.TLS     // nil: plain HTTP to the instances
	tag         string      // for a route from a tag, the tag: the route's pool is the instances that carry it
}

// pool returns the instances r sends to from the balancer's newest table:
// for a route from a urlprefix- tag, only the instances that carry the tag
// (as fabio does: the tag is the instance saying it serves the route); for
// a config or KV route, every healthy instance of the service.
func (p *Proxy) pool(r *route) *lb.Pool {
	pl, _ := p.servingPool(r, p.localPool(r))
	return pl
}

// localPool is pool without failover.
func (p *Proxy) localPool(r *route) *lb.Pool {
	if r.Port != "" {
		return p.bal.PortPool(r.Service, r.Port)
	}
	if r.tag != "" {
		return p.bal.TagPool(r.Service, r.tag)
	}
	return p.bal.Pool(r.Service)
}

// routeTable is one immutable generation of routes, built from the config
// and the tags of the lb table it names.
type routeTable struct {
	lbt     *lb.Table
	byHost  map[string]*pathSet // by exact host
	anyHost pathSet
	all     []*route // for display, by host then path
	bad     []badRoute
}

// badRoute is a KV route that could not be read: shown, not served.
type badRoute struct {
	key string
	err error
}

// pathSet holds the routes of one host indexed by the first segment of
// their path, so a lookup compares only the few routes that can match.
type pathSet struct {
	bySeg map[string][]*route // longest path first
	root  []*route            // the route for "/", if any
}

func (ps *pathSet) add(r *route) {
	seg := firstSegment(r.path)
	if len(seg) == 0 {
		ps.root = append(ps.root, r)
		return
	}
	if ps.bySeg == nil {
		ps.bySeg = map[string][]*route{}
	}
	ps.bySeg[string(seg)] = append(ps.bySeg[string(seg)], r)
}

func (ps *pathSet) sort() {
	byLen := func(a, b *route) int { return cmp.Compare(len(b.path), len(a.path)) }
	for _, rs := range ps.bySeg {
		slices.SortStableFunc(rs, byLen)
	}
}

func (ps *pathSet) match(path []byte) *route {
	if rs, ok := ps.bySeg[string(firstSegment(path))]; ok {
		if r := matchPath(rs, path); r != nil {
			return r
		}
	}
	return matchPath(ps.root, path)
}

// firstSegment returns "api" for /api, /api/ and /api/x.
func firstSegment(path []byte) []byte {
	if len(path) > 0 && path[0] == '/' {
		path = path[1:]
	}
	if i := bytes.IndexByte(path, '/'); i >= 0 {
		path = path[:i]
	}
	return path
}

// lookup returns the route with the longest match for host and path, nil if
// none. It does not allocate.
func (t *routeTable) lookup(host, path []byte) *route {
	if len(t.byHost) > 0 && len(host) > 0 {
		var buf [256]byte
		h := hostKey(buf[:0], host)
		if ps, ok := t.byHost[string(h)]; ok {
			if r := ps.match(path); r != nil {
				return r
			}
		}
	}
	return t.anyHost.match(path)
}

func matchPath(rs []*route, path []byte) *route {
	for _, r := range rs {
		if !bytes.HasPrefix(path, r.path) {
			continue
		}
		if len(path) == len(r.path) || r.path[len(r.path)-1] == '/' || path[len(r.path)] == '/' {
			return r
		}
	}
	return nil
}

// hostKey appends host without its port, in lower case.
func hostKey(dst, host []byte) []byte {
	if i := bytes.LastIndexByte(host, ':'); i >= 0 && !bytes.HasSuffix(host, []byte("]")) {
		host = host[:i]
	}
	if len(host) > cap(dst)-len(dst) {
		// ASCII folding here too, not bytes.ToLower: a route's host and a
		// request's must fold alike, whatever their length.
		dst = slices.Grow(dst, len(host))
	}
	for _, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// buildRoutes merges the config's routes with the urlprefix- tags of the
// services in lbt. A config route wins over a tag for the same host and
// path; among tags, the service first by name wins, and the loser is logged.
// warned remembers the KV routes already reported as bad (key to its
// ModifyIndex), so a bad value is logged once, not at every rebuild; nil
// reports every time. Routes' upstream TLS settings are not interned: each
// build makes its own (for tests; the proxy uses buildRoutesTLS).
func buildRoutes(cfg []Route, lbt *lb.Table, tags bool, maxFails int, failTimeout time.Duration, log *slog.Logger, warned map[string]uint64) *routeTable {
	return buildRoutesTLS(cfg, lbt, tags, maxFails, failTimeout, log, warned, nil)
}

// buildRoutesTLS is buildRoutes with tlsc, which interns the routes'
// upstream TLS settings so that they keep their clients across rebuilds.
func buildRoutesTLS(cfg []Route, lbt *lb.Table, tags bool, maxFails int, failTimeout time.Duration, log *slog.Logger, warned map[string]uint64, tlsc tlsCache) *routeTable {
	t := &routeTable{lbt: lbt, byHost: map[string]*pathSet{}}
	seen := map[string]*route{}
	add := func(r Route, tag string) error {
		if r.Path == "" {
			r.Path = "/"
		}
		r.Host = string(hostKey(nil, []byte(r.Host)))
		key := r.Host + r.Path
		if old := seen[key]; old != nil {
			if old.Service != r.Service {
				log.Warn("two routes for one host and path: the first wins", "route", key, "service", old.Service, "ignored", r.Service)
			}
			return nil
		}
		up, err := tlsc.upstream(&r)
		if err != nil {
			// Served without its TLS settings the route would send requests
			// in the clear, so it is not served at all.
			return fmt.Errorf("route %s: %w", key, err)
		}
		rt := &route{Route: r, path: []byte(r.Path), strip: []byte(r.Strip), prepend: []byte(r.Prepend), maxFails: maxFails, failTimeout: failTimeout, tls: up, tag: tag}
		if r.MaxFails != nil {
			rt.maxFails = *r.MaxFails
		}
		if r.FailTimeout > 0 {
			rt.failTimeout = r.FailTimeout
		}
		seen[key] = rt
		t.all = append(t.all, rt)
		ps := &t.anyHost
		if r.Host != "" {
			if ps = t.byHost[r.Host]; ps == nil {
				ps = &pathSet{}
				t.byHost[r.Host] = ps
			}
		}
		ps.add(rt)
		return nil
	}
	for _, r := range cfg {
		r.Source = "config"
		if err := add(r, ""); err != nil {
			log.Error("ignoring a route in the config", "err", err) // New checked it: only a test gets here
		}
	}
	if lbt != nil && lbt.Snapshot() != nil {
		for _, e := range lbt.Snapshot().KVList(KVRoutePrefix) {
			r, err := ParseRoute(e.Value)
			if err == nil {
				r.Source, r.Key = "kv", e.Key
				err = add(r, "")
			}
			if err != nil {
				t.bad = append(t.bad, badRoute{e.Key, err})
				if warned == nil || warned[e.Key] != e.ModifyIndex {
					log.Error("ignoring a route in the KV store", "key", e.Key, "err", err)
					if warned != nil {
						warned[e.Key] = e.ModifyIndex
					}
				}
			}
		}
	}
	if tags && lbt != nil {
		for _, st := range lbt.Services() {
			for _, tag := range st.Tags {
				r, ok, err := ParseTag(tag)
				if err != nil {
					log.Warn("ignoring a urlprefix- tag", "service", st.Name, "tag", tag, "err", err)
				}
				if !ok || err != nil {
					continue
				}
				r.Service, r.Source = st.Name, "tag"
				if err := add(r, tag); err != nil {
					log.Warn("ignoring a urlprefix- tag", "service", st.Name, "tag", tag, "err", err)
				}
			}
		}
	}
	t.anyHost.sort()
	for _, ps := range t.byHost {
		ps.sort()
	}
	slices.SortFunc(t.all, func(a, b *route) int {
		if c := cmp.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return cmp.Compare(a.Path, b.Path)
	})
	return t
}

// ParseTag reads a route from a service tag in fabio's form:
//
//	urlprefix-/api strip=/api
//	urlprefix-shop.example.com/
//	urlprefix-/v2 prepend=/api/v2
//	urlprefix-/secure proto=https tlsskipverify=true
//	urlprefix-shop.example.com/ tls=acme
//
// proto=https reaches the instances over TLS (as fabio does), verified
// against the system's roots for the instance's address unless
// tlsskipverify=true. tls=acme (pier's, not fabio's) has the front door
// get a certificate for the host from proxy.tls.acme's CA. ok is false for a tag that is not a urlprefix- tag,
// and for proto=tcp and proto=tcp+sni tags, which are TCP routes
// (ParseTCPTag). Options pier does not
// know (fabio's redirect=, allow=, ...) are an error, so the
// route is left out rather than served differently from what it says.
func ParseTag(tag string) (r Route, ok bool, err error) {
	rest, ok := strings.CutPrefix(tag, "urlprefix-")
	if !ok {
		return r, false, nil
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return r, true, fmt.Errorf("empty urlprefix- tag")
	}
	hp := fields[0]
	if i := strings.IndexByte(hp, '/'); i >= 0 {
		r.Host, r.Path = hp[:i], hp[i:]
	} else {
		r.Host, r.Path = hp, "/"
	}
	for _, opt := range fields[1:] {
		k, v, _ := strings.Cut(opt, "=")
		switch k {
		case "strip":
			r.Strip = v
		case "prepend":
			r.Prepend = v
		case "proto":
			switch v {
			case "http":
			case "https":
				r.TLS = true
			case "tcp", "tcp+sni":
				return r, false, nil // a TCP route: ParseTCPTag reads it
			case "grpc":
				r.Proto = ProtoGRPC
			case "grpcs":
				r.Proto, r.TLS = ProtoGRPC, true
			default:
				return r, true, fmt.Errorf("proto=%s: pier routes http, https, grpc, grpcs, tcp and tcp+sni only", v)
			}
		case "tls":
			if v != "acme" {
				return r, true, fmt.Errorf("tls=%s: want tls=acme (proto=https is TLS to the instances)", v)
			}
			r.ACME = true
		case "grpcidempotent":
			r.GRPCIdempotent = v
		case "tlsskipverify":
			switch v {
			case "true":
				r.TLSSkipVerify = true
			case "false":
			default:
				return r, true, fmt.Errorf("tlsskipverify=%s: want true or false", v)
			}
		default:
			return r, true, fmt.Errorf("unknown option %q", opt)
		}
	}
	if strings.HasPrefix(r.Host, ":") {
		return r, true, fmt.Errorf("a TCP route (%s): pier routes HTTP only", r.Host)
	}
	if r.ACME && r.Host == "" {
		return r, true, errors.New("tls=acme needs a host, the name the certificate is for")
	}
	r.Service = "_" // validated with a placeholder; the caller sets it
	if err := r.Validate(); err != nil {
		return r, true, err
	}
	r.Service = ""
	return r, true, nil
}

// rewrite appends the path to send upstream: path without r.Strip, after
// r.Prepend, always starting with /.
func (r *route) rewrite(dst, path []byte) []byte {
	if len(r.strip) > 0 && bytes.HasPrefix(path, r.strip) {
		path = path[len(r.strip):]
	}
	dst = append(dst, r.prepend...)
	if len(dst) > 0 && dst[len(dst)-1] == '/' && len(path) > 0 && path[0] == '/' {
		path = path[1:]
	}
	if len(path) == 0 || (path[0] != '/' && (len(dst) == 0 || dst[len(dst)-1] != '/')) {
		dst = append(dst, '/')
	}
	return append(dst, path...)
}
