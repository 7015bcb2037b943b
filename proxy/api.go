package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// RouteInfo is one route as /v1/pier/routes and pier routes show it.
type RouteInfo struct {
	Host        string
	Path        string
	Service     string
	Port        string `json:",omitempty"` // the named port the route sends to
	Strip       string `json:",omitempty"`
	Prepend     string `json:",omitempty"`
	Source      string
	Key         string `json:",omitempty"` // for a route from the KV store, its key
	Error       string `json:",omitempty"` // why a KV route is not served
	MaxFails    int
	FailTimeout string

	TLS           bool   `json:",omitempty"` // instances are reached over HTTPS
	TLSSkipVerify bool   `json:",omitempty"`
	TLSServerName string `json:",omitempty"`
	TLSCAFile     string `json:",omitempty"`
	Proto         string `json:",omitempty"` // "grpc": instances are reached over HTTP/2
	// ACME, for a route with tls=acme: "managed" (its host's certificate
	// comes from proxy.tls.acme), "refused" (not a name ACME can prove, or
	// outside proxy.tls.acme.allow) or "no proxy.tls.acme".
	ACME string `json:",omitempty"`

	Total     int // instances in the catalog, healthy or not
	Instances []InstanceInfo
	// Failover is the route's failover; ServingFrom the datacenter it
	// sends to now when that is another one (failover.go).
	Failover    *Failover `json:",omitempty"`
	ServingFrom string    `json:",omitempty"`
}

// InstanceInfo is one healthy instance of a route's service.
type InstanceInfo struct {
	ID        string
	Node      string
	Addr      string
	Weight    int64
	InFlight  int64
	Requests  uint64
	DownUntil *time.Time `json:",omitempty"` // set while passive health checking keeps it out
}

// Routes returns the route table, longest match last within a host, with
// each route's healthy instances.
func (p *Proxy) Routes() []RouteInfo {
	rt := p.syncRoutes()
	out := make([]RouteInfo, 0, len(rt.all))
	for _, r := range rt.all {
		ri := RouteInfo{
			Host: r.Host, Path: r.Path, Service: r.Service, Port: r.Port, Strip: r.Strip, Prepend: r.Prepend,
			Source: r.Source, Key: r.Key, MaxFails: r.maxFails, FailTimeout: r.failTimeout.String(),
			TLS: r.TLS, TLSSkipVerify: r.TLSSkipVerify, TLSServerName: r.TLSServerName, TLSCAFile: r.TLSCAFile, Proto: r.Proto,
			Instances: []InstanceInfo{},
		}
		switch {
		case !r.ACME && !(r.Source == "config" && p.acme.managed(r.Host)):
		case p.acme == nil:
			ri.ACME = "no proxy.tls.acme"
		case p.acme.managed(r.Host):
			ri.ACME = "managed"
		default:
			ri.ACME = "refused"
		}
		pool := rt.lbt.Pool(r.Service)
		switch {
		case r.Port != "":
			pool = rt.lbt.PortPool(r.Service, r.Port)
		case r.tag != "":
			pool = rt.lbt.TagPool(r.Service, r.tag)
		}
		ri.Total = pool.Total()
		ri.Failover = r.Failover
		if fp, dc := p.servingPool(r, pool); dc != "" {
			pool, ri.ServingFrom = fp, dc
		}
		ri.Instances = instanceInfos(pool)
		out = append(out, ri)
	}
	for _, b := range rt.bad {
		out = append(out, RouteInfo{Source: "kv", Key: b.key, Error: b.err.Error(), Instances: []InstanceInfo{}})
	}
	return out
}

// RoutesHandler serves GET /v1/pier/routes on the agent's HTTP API.
func (p *Proxy) RoutesHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		if _, ok := r.URL.Query()["pretty"]; ok {
			enc.SetIndent("", "    ")
		}
		enc.Encode(p.Routes())
	})
}

// ValidateRouteHandler serves PUT /v1/pier/validate/route: the body is a
// route as it would be stored under pier/routes/ (YAML or JSON), checked
// as a front door would read it. 200 with the route as read, or 400 with
// the reason, so that an editor can refuse a route before it is saved.
func ValidateRouteHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 512<<10))
		if err != nil {
			http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		rt, err := ParseRoute(b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rt)
	})
}
