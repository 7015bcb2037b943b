package proxy

import (
	"fmt"
	"maps"
	"net"
	"slices"
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

// syncDynamic opens the listeners of KV routes and proto=tcp tags that
// appeared, closes those that are gone (their open connections drain),
// points a kept listener at its route's newest value, and rebuilds the
// passthrough names of the TLS listener from the config's, the KV's and
// the tags' sni routes. A route from the config wins over one from the KV
// store, which wins over a tag, for the same listener or name; between KV
// keys the first by name wins, between tags the first service by name.
// Losers are logged once (a KV route is also shown with its error). It
// returns the routes being served.
func (t *TCPProxy) syncDynamic(tb *lb.Table) map[*tcpRoute]bool {
	sni := make(map[string]*tcpRoute, len(t.cfgSNI))
	for k, rt := range t.cfgSNI {
		sni[k] = rt
	}
	want, bad := t.readKV(tb, t.cfgListen, sni)
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
						if old.Service != st.Name || old.Source != "tag" {
							t.warnOnce("ignoring a urlprefix- tag", st.Name, tag, fmt.Errorf("sni %s is already routed by %s", r.SNI, old.origin()))
						}
						continue
					}
					sni[r.SNI] = t.tagRoute(r)
					continue
				}
				if t.cfgListen[r.Listen] {
					t.warnOnce("ignoring a urlprefix- tag", r.Service, tag, fmt.Errorf("listen %s is a route of the config file", r.Listen))
					continue
				}
				if w := want[r.Listen]; w != nil {
					if old := w.first(); old.Service != st.Name || old.Source != "tag" {
						t.warnOnce("ignoring a urlprefix- tag", st.Name, tag, fmt.Errorf("listen %s is already routed by %s", r.Listen, old.origin()))
					}
					continue
				}
				want[r.Listen] = &wantListener{source: "tag", plain: t.tagRoute(r)}
			}
		}
	}
	t.sni.Store(&sni)

	live := map[*tcpRoute]bool{}
	for _, rt := range sni {
		live[rt] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return live
	}
	for addr, l := range t.listeners {
		if l.source == "config" {
			if rt := l.plain.Load(); rt != nil {
				live[rt] = true
			} else if m := l.byName.Load(); m != nil {
				for _, rt := range *m {
					live[rt] = true
				}
			}
			continue
		}
		w := want[addr]
		if w == nil {
			l.ln.Close()
			delete(t.listeners, addr)
			t.p.log.Info("tcp route removed", "listen", addr, "source", l.source)
			continue
		}
		l.source = w.source
		l.set(w)
	}
	for addr, w := range want {
		if t.listeners[addr] != nil {
			w.routes(func(rt *tcpRoute) { live[rt] = true })
			continue
		}
		ln, err := t.listen(addr)
		if err != nil {
			if w.source == "tag" {
				t.warnOnceLocked("cannot listen for a urlprefix- tag", w.plain.Service, w.plain.tag, err)
				continue
			}
			w.routes(func(rt *tcpRoute) {
				err := fmt.Errorf("listen %q: %w", addr, err)
				bad = append(bad, badRoute{rt.Key, err})
				t.warnKVLocked(rt.Key, t.kvIndex(rt), err)
			})
			continue
		}
		l := &tcpListener{ln: ln, source: w.source}
		l.set(w)
		t.listeners[addr] = l
		w.routes(func(rt *tcpRoute) {
			live[rt] = true
			t.p.log.Info("tcp route", "listen", ln.Addr().String(), "sni", rt.SNI, "service", rt.Service, "source", rt.Source, "key", rt.Key, "tag", rt.tag)
		})
		t.serve(l)
	}
	slices.SortFunc(bad, func(a, b badRoute) int { return strings.Compare(a.key, b.key) })
	t.bad = bad
	return live
}

// set points the listener at the routes wanted, if they changed.
func (l *tcpListener) set(w *wantListener) {
	if w.plain != nil {
		if l.plain.Load() != w.plain {
			l.plain.Store(w.plain)
		}
		l.byName.Store(nil)
		return
	}
	if old := l.byName.Load(); old == nil || !maps.Equal(*old, w.byName) {
		m := maps.Clone(w.byName)
		l.byName.Store(&m)
	}
	l.plain.Store(nil)
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
