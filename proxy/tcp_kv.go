package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/pier-dev/pier/lb"
	"github.com/pier-dev/pier/registry"
)

// KVTCPRoutePrefix is where TCP routes live in the KV store: one route per
// key, in the shape of an entry of the config file's proxy.tcp (YAML or
// JSON). Config routes win over KV routes for the same listener or server
// name, and KV routes over tag routes.
const KVTCPRoutePrefix = "pier/tcp-routes/"

// ParseTCPRoute reads one TCP route from YAML or JSON (keys as in
// proxy.tcp: listen, sni, service, idle_timeout, drain_timeout) and
// validates it.
func ParseTCPRoute(b []byte) (TCPRoute, error) {
	var r TCPRoute
	j, _, err := kvMapping(b, `{listen: ":5432", service: pg}`)
	if err != nil {
		return r, err
	}
	if err := registry.DecodeConfig("", j, &r); err != nil {
		return TCPRoute{}, err
	}
	if err := r.Validate(); err != nil {
		return TCPRoute{}, err
	}
	return r, nil
}

// ValidateTCPRouteHandler serves PUT /v1/pier/validate/tcp-route: the body
// is a TCP route as it would be stored under pier/tcp-routes/, checked as a
// front door would read it; 200 with the route as read, or 400 naming the
// field. Whether its listen address is free is only known to each front
// door when it opens it (pier routes shows a failure there).
func ValidateTCPRouteHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 512<<10))
		if err != nil {
			http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		rt, err := ParseTCPRoute(b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rt)
	})
}

// kvTCPRoute is a KV route made ready, kept while its key's value is the
// same (so that its metrics children and open connections stay its own).
type kvTCPRoute struct {
	rt  *tcpRoute
	idx uint64 // the key's ModifyIndex
}

// readKV reads the TCP routes under KVTCPRoutePrefix. Routes that cannot
// be read, or that clash with a route read before (the config's, or an
// earlier key's by name), go to bad with the reason, never half served.
// cfgListen is the config's listen addresses; sni the names routed so far
// on the TLS listener, to which the KV's are added.
func (t *TCPProxy) readKV(tb *lb.Table, cfgListen map[string]bool, sni map[string]*tcpRoute) (map[string]*wantListener, []badRoute) {
	want := map[string]*wantListener{}
	snap := tb.Snapshot()
	if snap == nil {
		return want, nil
	}
	var bad []badRoute
	seen := make(map[string]bool)
	for _, e := range snap.KVList(KVTCPRoutePrefix) {
		seen[e.Key] = true
		r, err := ParseTCPRoute(e.Value)
		if err == nil {
			r.Source, r.Key = "kv", e.Key
			err = t.placeKV(r, e.ModifyIndex, cfgListen, sni, want)
		}
		if err != nil {
			bad = append(bad, badRoute{e.Key, err})
			t.warnKV(e.Key, e.ModifyIndex, err)
		}
	}
	t.tagMu.Lock()
	for k := range t.kvRoutes {
		if !seen[k] {
			delete(t.kvRoutes, k)
		}
	}
	t.tagMu.Unlock()
	return want, bad
}

// placeKV adds a KV route to the listeners wanted, or to the TLS
// listener's names.
func (t *TCPProxy) placeKV(r TCPRoute, idx uint64, cfgListen map[string]bool, sni map[string]*tcpRoute, want map[string]*wantListener) error {
	if r.Listen == "" {
		if old := sni[r.SNI]; old != nil {
			return fmt.Errorf("sni %q: already routed by %s", r.SNI, old.origin())
		}
		sni[r.SNI] = t.kvRoute(r, idx)
		return nil
	}
	if cfgListen[r.Listen] {
		return fmt.Errorf("listen %q: already a route of the config file", r.Listen)
	}
	w := want[r.Listen]
	if w == nil {
		w = &wantListener{source: "kv"}
		want[r.Listen] = w
	}
	switch {
	case r.SNI == "" && (w.plain != nil || w.byName != nil):
		return fmt.Errorf("listen %q: already routed by %s (only sni routes share a listener)", r.Listen, w.first().origin())
	case r.SNI != "" && w.plain != nil:
		return fmt.Errorf("listen %q: already routed by %s, without sni", r.Listen, w.plain.origin())
	case r.SNI != "" && w.byName[r.SNI] != nil:
		return fmt.Errorf("sni %q on listen %q: already routed by %s", r.SNI, r.Listen, w.byName[r.SNI].origin())
	}
	rt := t.kvRoute(r, idx)
	if r.SNI == "" {
		w.plain = rt
	} else {
		if w.byName == nil {
			w.byName = map[string]*tcpRoute{}
		}
		w.byName[r.SNI] = rt
	}
	return nil
}

// kvRoute makes the route of a KV key's value, reusing the one made for
// the same value.
func (t *TCPProxy) kvRoute(r TCPRoute, idx uint64) *tcpRoute {
	t.tagMu.Lock()
	defer t.tagMu.Unlock()
	if k := t.kvRoutes[r.Key]; k != nil && k.idx == idx {
		return k.rt
	}
	if t.kvRoutes == nil {
		t.kvRoutes = map[string]*kvTCPRoute{}
	}
	rt := t.newRoute(r)
	t.kvRoutes[r.Key] = &kvTCPRoute{rt: rt, idx: idx}
	return rt
}

// warnKV logs a bad KV route once per value and error.
func (t *TCPProxy) warnKV(key string, idx uint64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.warnKVLocked(key, idx, err)
}

func (t *TCPProxy) warnKVLocked(key string, idx uint64, err error) {
	if t.kvWarned == nil {
		t.kvWarned = map[string]string{}
	}
	v := strconv.FormatUint(idx, 10) + "\x00" + err.Error()
	if t.kvWarned[key] == v {
		return
	}
	t.kvWarned[key] = v
	t.p.log.Error("ignoring a tcp route in the KV store", "key", key, "err", err)
}

// kvIndex is the ModifyIndex of the value a KV route was made from.
func (t *TCPProxy) kvIndex(rt *tcpRoute) uint64 {
	t.tagMu.Lock()
	defer t.tagMu.Unlock()
	if k := t.kvRoutes[rt.Key]; k != nil {
		return k.idx
	}
	return 0
}

// wantListener is what a listener opened for KV or tag routes should
// serve: one plain route, or routes by server name.
type wantListener struct {
	source string // "kv" or "tag"
	plain  *tcpRoute
	byName map[string]*tcpRoute
}

func (w *wantListener) first() *tcpRoute {
	if w.plain != nil {
		return w.plain
	}
	for _, rt := range w.byName {
		return rt
	}
	return nil
}

// routes calls f with each of the listener's routes.
func (w *wantListener) routes(f func(*tcpRoute)) {
	if w.plain != nil {
		f(w.plain)
	}
	for _, rt := range w.byName {
		f(rt)
	}
}

// origin names where a route came from, for messages.
func (r *tcpRoute) origin() string {
	switch r.Source {
	case "kv":
		return "the KV key " + r.Key
	case "tag":
		return "the tag " + strconv.Quote(r.tag) + " of " + r.Service
	}
	return "the config file"
}
