package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/pier-dev/pier/proxy"
	"github.com/pier-dev/pier/registry"
)

// acmeRoute is a route of proxy.routes with tls: acme: its host gets a
// certificate from proxy.tls.acme's CA. (A route's tls is otherwise the
// upstream's, a boolean; the string acme is taken out before the route is
// decoded.)
type acmeRoute struct {
	index int // in its file's proxy.routes
	host  string
}

// takeACMERoutes finds the routes of a proxy section whose tls is "acme",
// notes their hosts and answers the section with that tls taken out.
func (p *proxySettings) takeACMERoutes(raw []byte) ([]byte, error) {
	var sec map[string]json.RawMessage
	if json.Unmarshal(raw, &sec) != nil {
		return raw, nil // not an object: the decoder says what is wrong
	}
	for k, v := range sec {
		if !strings.EqualFold(k, "routes") {
			continue
		}
		var routes []map[string]json.RawMessage
		if json.Unmarshal(v, &routes) != nil {
			return raw, nil
		}
		changed := false
		for i, rt := range routes {
			for rk, rv := range rt {
				var s string
				if !strings.EqualFold(rk, "tls") || json.Unmarshal(rv, &s) != nil {
					continue
				}
				if s != "acme" {
					return nil, fmt.Errorf("proxy.routes[%d].tls %q: want true, false or acme", i, s)
				}
				var host string
				for hk, hv := range rt {
					if strings.EqualFold(hk, "host") {
						json.Unmarshal(hv, &host)
					}
				}
				p.acme = append(p.acme, acmeRoute{index: i, host: host})
				delete(rt, rk)
				changed = true
			}
		}
		if !changed {
			return raw, nil
		}
		b, err := json.Marshal(routes)
		if err != nil {
			return nil, err
		}
		sec[k] = b
	}
	return json.Marshal(sec)
}

// resolveACME checks proxy.tls.acme and adds the hosts of tls: acme routes
// to its names.
func (p *proxySettings) resolveACME() error {
	t := p.proxy.TLS
	for _, r := range p.acme {
		if t == nil || t.ACME == nil {
			return fmt.Errorf("proxy.routes[%d].tls: acme needs proxy.tls.acme (the CA and the account)", r.index)
		}
		if r.host == "" {
			return fmt.Errorf("proxy.routes[%d].tls: acme needs the route's host, the name the certificate is for", r.index)
		}
		h := strings.ToLower(r.host)
		if !slices.ContainsFunc(t.ACME.Names, func(n string) bool { return strings.EqualFold(n, h) }) {
			t.ACME.Names = append(t.ACME.Names, h)
		}
	}
	p.acme = nil
	if t == nil || t.ACME == nil {
		return nil
	}
	if err := t.ACME.Validate(); err != nil {
		return fmt.Errorf("proxy.tls.acme.%w", err)
	}
	return nil // no names is fine: tag and KV routes with tls=acme bring theirs at run time
}

// withACMEStorage answers the proxy config with its ACME certificates kept
// in the servers' KV through h (the agent's API), asking with the token of
// proxy.tls.acme, or else the agent's own; DNS-01 records are waited for
// in reg, which the agent's DNS server answers from.
func withACMEStorage(pc proxy.Config, h http.Handler, reg *registry.Registry, agentToken string, log *slog.Logger) (proxy.Config, *kvStorage) {
	if pc.TLS == nil || pc.TLS.ACME == nil {
		return pc, nil
	}
	t := *pc.TLS
	a := *t.ACME
	tok := a.Token
	if tok == "" {
		tok = agentToken
	}
	st := newKVStorage(h, tok, log.With("component", "acme"))
	st.local = func(key string) ([]byte, bool) {
		e, ok := reg.Snapshot().KV(key)
		if !ok {
			return nil, false
		}
		return e.Value, true
	}
	a.Storage = st
	t.ACME = &a
	pc.TLS = &t
	return pc, st
}
