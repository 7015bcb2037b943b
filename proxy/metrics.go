package proxy

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// proxyMetrics are the front door's metrics. The labelled children a
// request touches are looked up once per route when the route table is
// built and cached on the route (routeStats), so a request only adds to
// counters it already holds: no allocation, no lock, no map lookup. Stats
// outlive route tables (they are keyed by route and service) and are
// deleted, with their series, when a route or service goes away.
type proxyMetrics struct {
	requests  *prometheus.CounterVec   // route, service, code
	duration  *prometheus.HistogramVec // route, service
	ejections *prometheus.CounterVec   // service
	retries   *prometheus.CounterVec   // service
	grpc      *prometheus.CounterVec   // route, service, grpc_status

	mu       sync.Mutex // guards the maps; taken only when routes are rebuilt
	routes   map[routeKey]*routeStats
	services map[string]*serviceStats
	none     *routeStats // requests that matched no route (route="", service="")
}

type routeKey struct{ route, service string }

// routeStats are the cached children of one route.
type routeStats struct {
	m        *proxyMetrics
	key      routeKey
	duration prometheus.Observer
	svc      *serviceStats
	codes    [len(commonCodes)]atomic.Pointer[prometheus.Counter]
	hist     histState // the history sampler's last reading
}

type serviceStats struct {
	ejections prometheus.Counter
	retries   prometheus.Counter
}

// commonCodes get a cached counter per route; other codes are counted
// through the vector's own lookup, which allocates a little.
var commonCodes = [...]int{200, 201, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 413, 429, 431, 500, 502, 503, 504}

func codeSlot(code int) int {
	switch code {
	case 200:
		return 0
	case 201:
		return 1
	case 204:
		return 2
	case 206:
		return 3
	case 301:
		return 4
	case 302:
		return 5
	case 304:
		return 6
	case 307:
		return 7
	case 308:
		return 8
	case 400:
		return 9
	case 401:
		return 10
	case 403:
		return 11
	case 404:
		return 12
	case 405:
		return 13
	case 408:
		return 14
	case 413:
		return 15
	case 429:
		return 16
	case 431:
		return 17
	case 500:
		return 18
	case 502:
		return 19
	case 503:
		return 20
	case 504:
		return 21
	}
	return -1
}

func newMetrics(reg prometheus.Registerer, openConns func() int32) (*proxyMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &proxyMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "requests_total",
			Help: "Requests answered by the proxy, by route (host and path prefix, empty when none matched), service and status code.",
		}, []string{"route", "service", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to its response headers, retries included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "service"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "upstream_ejections_total",
			Help: "Instances taken out of rotation by passive health checking (max_fails within fail_timeout).",
		}, []string{"service"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "retries_total",
			Help: "Attempts of a request on another instance after a failed one.",
		}, []string{"service"}),
		grpc: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "grpc_calls_total",
			Help: "gRPC calls answered by the proxy, by route, service and grpc-status (the instance's, or pier's own when it answered).",
		}, []string{"route", "service", "grpc_status"}),
		routes:   map[routeKey]*routeStats{},
		services: map[string]*serviceStats{},
	}
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "pier", Subsystem: "proxy", Name: "open_connections",
		Help: "Client connections open to the proxy.",
	}, func() float64 { return float64(openConns()) })
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.ejections, m.retries, m.grpc, open} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.none = m.newRouteStats(routeKey{}, nil)
	return m, nil
}

func (m *proxyMetrics) newRouteStats(k routeKey, svc *serviceStats) *routeStats {
	return &routeStats{m: m, key: k, svc: svc, duration: m.duration.WithLabelValues(k.route, k.service)}
}

// attach gives every route of rt its stats, creating those of new routes,
// and deletes the series of routes and services rt no longer has. Called
// with the proxy's rebuild lock held, before rt is published.
func (m *proxyMetrics) attach(rt *routeTable) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := make(map[routeKey]bool, len(rt.all))
	keepSvc := make(map[string]bool)
	for _, r := range rt.all {
		k := routeKey{r.Host + r.Path, r.Service}
		keep[k], keepSvc[r.Service] = true, true
		svc := m.services[r.Service]
		if svc == nil {
			svc = &serviceStats{ejections: m.ejections.WithLabelValues(r.Service), retries: m.retries.WithLabelValues(r.Service)}
			m.services[r.Service] = svc
		}
		st := m.routes[k]
		if st == nil {
			st = m.newRouteStats(k, svc)
			m.routes[k] = st
		}
		r.stats = st
	}
	for k := range m.routes {
		if !keep[k] {
			delete(m.routes, k)
			labels := prometheus.Labels{"route": k.route, "service": k.service}
			m.requests.DeletePartialMatch(labels)
			m.grpc.DeletePartialMatch(labels)
			m.duration.Delete(labels)
		}
	}
	for name := range m.services {
		if !keepSvc[name] {
			delete(m.services, name)
			m.ejections.DeleteLabelValues(name)
			m.retries.DeleteLabelValues(name)
		}
	}
}

// done records one answered request; r is nil when no route matched.
func (m *proxyMetrics) done(r *route, code int, start time.Time, tries int) {
	st := m.none
	if r != nil && r.stats != nil {
		st = r.stats
	}
	st.count(code)
	if !start.IsZero() {
		st.duration.Observe(time.Since(start).Seconds())
	}
	if tries > 1 && st.svc != nil {
		st.svc.retries.Add(float64(tries - 1))
	}
}

func (st *routeStats) count(code int) {
	i := codeSlot(code)
	if i < 0 {
		st.m.requests.WithLabelValues(st.key.route, st.key.service, strconv.Itoa(code)).Inc()
		return
	}
	if c := st.codes[i].Load(); c != nil {
		(*c).Inc()
		return
	}
	// First request with this code on this route. A request racing with
	// attach's deletion may recreate a series of a route that just went
	// away; it is deleted with the next rebuild that lacks the route.
	c := st.m.requests.WithLabelValues(st.key.route, st.key.service, strconv.Itoa(code))
	st.codes[i].Store(&c)
	c.Inc()
}

// ejected counts a backend taken out of rotation by a request on r.
func (m *proxyMetrics) ejected(r *route) {
	if m != nil && r.stats != nil && r.stats.svc != nil {
		r.stats.svc.ejections.Inc()
	}
}

// grpcDone counts a gRPC call by its status; r is nil when no route
// matched. Calls are counted through the vector's lookup (a few
// allocations): the gRPC path is not the allocation-free one.
func (m *proxyMetrics) grpcDone(r *route, status string) {
	k := routeKey{}
	if r != nil && r.stats != nil {
		k = r.stats.key
	}
	switch {
	case status == "":
		status = "none"
	case !grpcCode(status):
		status = "other" // the instance's to choose: the series stay bounded
	}
	m.grpc.WithLabelValues(k.route, k.service, status).Inc()
}

// grpcCode reports whether s is one of gRPC's 17 status codes, written as
// gRPC writes them.
func grpcCode(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 0 && n <= 16 && strconv.Itoa(n) == s
}
