package proxy

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"github.com/pier-dev/pier/lb"
)

// TCPRouteInfo is one TCP or SNI passthrough route as /v1/pier/tcp-routes
// and pier routes show it.
type TCPRouteInfo struct {
	Listen       string `json:",omitempty"` // as configured; "" for passthrough on the TLS listener
	Addr         string `json:",omitempty"` // the address bound, when Listen is set
	SNI          string `json:",omitempty"`
	Service      string
	Source       string // "config", "kv" or "tag"
	Key          string `json:",omitempty"` // the KV key of a route from the KV store
	Error        string `json:",omitempty"` // why a KV route is not served
	IdleTimeout  string
	DrainTimeout string
	Open         int // connections open now
	Total        int // instances in the catalog, healthy or not
	Instances    []InstanceInfo
}

// Routes lists the TCP routes being served: the listeners' (by listen
// address), the TLS listener's passthrough names, and then the KV routes
// not served, with their error.
func (t *TCPProxy) Routes() []TCPRouteInfo {
	tb := t.p.bal.Table()
	open := map[*tcpRoute]int{}
	var out []TCPRouteInfo
	add := func(rt *tcpRoute, addr string) {
		pool := rt.pool(tb)
		out = append(out, TCPRouteInfo{Listen: rt.Listen, Addr: addr, SNI: rt.SNI, Service: rt.Service, Source: rt.Source, Key: rt.Key,
			IdleTimeout: rt.idle.String(), DrainTimeout: rt.drain.String(), Open: open[rt], Total: pool.Total(), Instances: instanceInfos(pool)})
	}
	t.mu.Lock()
	for c := range t.conns {
		open[c.rt]++
	}
	if t.loops != nil {
		t.loops.open(open)
	}
	ls := make([]string, 0, len(t.listeners))
	for k := range t.listeners {
		ls = append(ls, k)
	}
	slices.Sort(ls)
	for _, k := range ls {
		l := t.listeners[k]
		addr := l.ln.Addr().String()
		if rt := l.plain.Load(); rt != nil {
			add(rt, addr)
		} else if m := l.byName.Load(); m != nil {
			for _, n := range sortedKeys(*m) {
				add((*m)[n], addr)
			}
		}
	}
	bad := t.bad
	t.mu.Unlock()
	sni := *t.sni.Load()
	for _, n := range sortedKeys(sni) {
		add(sni[n], "")
	}
	for _, b := range bad {
		out = append(out, TCPRouteInfo{Source: "kv", Key: b.key, Error: b.err.Error(), Instances: []InstanceInfo{}})
	}
	return out
}

func sortedKeys(m map[string]*tcpRoute) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, strings.Compare)
	return ks
}

// instanceInfos describes a pool's healthy instances.
func instanceInfos(pool *lb.Pool) []InstanceInfo {
	out := []InstanceInfo{}
	for _, m := range pool.Members() {
		ii := InstanceInfo{ID: m.ID, Node: m.Node, Addr: m.Backend.Addr(), Weight: m.Weight,
			InFlight: m.Backend.InFlight(), Requests: m.Backend.Requests()}
		if d := m.Backend.DownUntil(); !d.IsZero() {
			ii.DownUntil = &d
		}
		out = append(out, ii)
	}
	return out
}

// RoutesHandler serves GET /v1/pier/tcp-routes on the agent's HTTP API.
func (t *TCPProxy) RoutesHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		rs := t.Routes()
		if rs == nil {
			rs = []TCPRouteInfo{}
		}
		json.NewEncoder(w).Encode(rs)
	})
}
