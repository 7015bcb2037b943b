package proxy

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/pier-dev/pier/lb"
)

// ParseTCPTag reads a TCP route from a service tag in fabio's forms:
//
//	urlprefix-:5432 proto=tcp             a listener on port 5432 of the front door's address
//	urlprefix-db.example.com proto=tcp+sni TLS connections naming db.example.com on the TLS listener, passed through
//
// ok is false for a tag that is not a urlprefix- tag with proto=tcp or
// proto=tcp+sni (ParseTag reads those). host is where a :port listens.
func ParseTCPTag(tag, host string) (r TCPRoute, ok bool, err error) {
	rest, ok := strings.CutPrefix(tag, "urlprefix-")
	if !ok {
		return r, false, nil
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return r, false, nil
	}
	proto := ""
	for _, opt := range fields[1:] {
		if v, ok := strings.CutPrefix(opt, "proto="); ok {
			proto = v
		}
	}
	if proto != "tcp" && proto != "tcp+sni" {
		return r, false, nil
	}
	for _, opt := range fields[1:] {
		if !strings.HasPrefix(opt, "proto=") {
			return r, true, fmt.Errorf("unknown option %q for a proto=%s route", opt, proto)
		}
	}
	hp := fields[0]
	r.Service = "_" // validated with a placeholder; the caller sets it
	if proto == "tcp" {
		h, port, err := net.SplitHostPort(hp)
		if err != nil {
			return r, true, fmt.Errorf("%q: a proto=tcp route is :port or ip:port", hp)
		}
		if h == "" {
			h = host
		}
		r.Listen = net.JoinHostPort(h, port)
	} else {
		r.SNI = strings.TrimSuffix(hp, "/")
		if strings.ContainsAny(r.SNI, ":/") {
			return r, true, fmt.Errorf("%q: a proto=tcp+sni route is a host name", hp)
		}
	}
	if err := r.Validate(); err != nil {
		return r, true, err
	}
	r.Service, r.Source, r.tag = "", "tag", tag
	return r, true, nil
}

// syncTags opens the listeners of proto=tcp tags that appeared, closes
// those of tags that are gone (their open connections drain, as their
// instances have left the tag's pool), and rebuilds the passthrough names
// of the TLS listener from the config's and the tags' sni routes. A route
// from the config wins over a tag for the same listener or name; between
// tags, the first service by name wins. Both are logged once.
func (t *TCPProxy) syncTags(tb *lb.Table) {
	sni := make(map[string]*tcpRoute, len(t.cfgSNI))
	for k, rt := range t.cfgSNI {
		sni[k] = rt
	}
	plain := map[string]TCPRoute{}
	if t.p.cfg.Tags {
		for _, st := range tb.Services() {
			for _, tag := range st.Tags {
				r, ok, err := ParseTCPTag(tag, t.cfg.TagHost)
				if !ok {
					continue
				}
				r.Service = st.Name
				if err != nil {
					t.warnOnce("ignoring a urlprefix- tag", st.Name, tag, err)
					continue
				}
				if r.SNI != "" {
					if old := sni[r.SNI]; old != nil {
						if old.Service != st.Name {
							t.warnOnce("ignoring a urlprefix- tag", st.Name, tag, fmt.Errorf("sni %s is already routed to %s", r.SNI, old.Service))
						}
						continue
					}
					sni[r.SNI] = t.tagRoute(r)
					continue
				}
				if old, dup := plain[r.Listen]; dup {
					if old.Service != st.Name {
						t.warnOnce("ignoring a urlprefix- tag", st.Name, tag, fmt.Errorf("listen %s is already routed to %s", r.Listen, old.Service))
					}
					continue
				}
				plain[r.Listen] = r
			}
		}
	}
	t.sni.Store(&sni)

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	for addr, l := range t.listeners {
		if l.source != "tag" {
			continue
		}
		r, keep := plain[addr]
		if !keep {
			l.ln.Close()
			delete(t.listeners, addr)
			t.p.log.Info("tcp route from a tag removed", "listen", addr)
			continue
		}
		if old := l.plain.Load(); old.Service != r.Service || old.tag != r.tag {
			l.plain.Store(t.tagRoute(r))
		}
	}
	for addr, r := range plain {
		if l := t.listeners[addr]; l != nil {
			if l.source == "config" {
				t.warnOnceLocked("ignoring a urlprefix- tag", r.Service, r.tag, fmt.Errorf("listen %s is a route of the config file", addr))
			}
			continue
		}
		ln, err := listenTCP(addr)
		if err != nil {
			t.warnOnceLocked("cannot listen for a urlprefix- tag", r.Service, r.tag, err)
			continue
		}
		l := &tcpListener{ln: ln, source: "tag"}
		l.plain.Store(t.tagRoute(r))
		t.listeners[addr] = l
		t.p.log.Info("tcp route from a tag", "listen", ln.Addr().String(), "service", r.Service, "tag", r.tag)
		t.serve(l)
	}
}

// tagRoute makes the route of a tag, reusing the one made before for the
// same service and tag so that its metrics children are kept.
func (t *TCPProxy) tagRoute(r TCPRoute) *tcpRoute {
	k := r.Service + "\x00" + r.tag
	t.tagMu.Lock()
	defer t.tagMu.Unlock()
	if rt := t.tagRoutes[k]; rt != nil {
		return rt
	}
	if t.tagRoutes == nil {
		t.tagRoutes = map[string]*tcpRoute{}
	}
	rt := t.newRoute(r)
	t.tagRoutes[k] = rt
	return rt
}

func (t *TCPProxy) warnOnce(msg, service, tag string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.warnOnceLocked(msg, service, tag, err)
}

// warnOnceLocked logs a problem with a tag the first time it is seen, not
// at every catalog change.
func (t *TCPProxy) warnOnceLocked(msg, service, tag string, err error) {
	k := service + "\x00" + tag + "\x00" + strconv.Quote(err.Error())
	if t.warned == nil {
		t.warned = map[string]bool{}
	}
	if t.warned[k] {
		return
	}
	t.warned[k] = true
	t.p.log.Warn(msg, "service", service, "tag", tag, "err", err)
}
