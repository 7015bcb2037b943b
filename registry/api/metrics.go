package api

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// apiMetrics are the HTTP API's metrics. Requests are labelled with the
// route pattern that served them ("GET /v1/health/service/{name}"), never
// the path, so the number of series is bounded by the number of routes.
type apiMetrics struct {
	requests *prometheus.CounterVec // endpoint, code
	blocking prometheus.Gauge
	refused  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*apiMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &apiMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "api", Name: "requests_total",
			Help: `HTTP API requests by endpoint (the route pattern, such as "GET /v1/catalog/service/{name}"; "other" when none matched) and status code.`,
		}, []string{"endpoint", "code"}),
		blocking: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "pier", Subsystem: "api", Name: "blocking_queries",
			Help: "Blocking queries (?index=, ?hash=) waiting for a change.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "api", Name: "requests_limited_total",
			Help: "Requests refused with 429 because their client had limits.http_max_conns_per_client requests in progress.",
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.blocking, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// limited counts a request refused by the per-client limit.
func (m *apiMetrics) limited() {
	if m != nil {
		m.refused.Inc()
	}
}

// blockStart and blockEnd bracket a blocking query's wait.
func (m *apiMetrics) blockStart() {
	if m != nil {
		m.blocking.Inc()
	}
}

func (m *apiMetrics) blockEnd() {
	if m != nil {
		m.blocking.Dec()
	}
}

// serve runs h and counts the request under the pattern the mux chose.
func (m *apiMetrics) serve(h http.Handler, w http.ResponseWriter, r *http.Request) {
	if m == nil {
		h.ServeHTTP(w, r)
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	h.ServeHTTP(sw, r)
	endpoint := r.Pattern // set by ServeMux on r once it has routed the request
	if endpoint == "" {
		endpoint = "other"
	}
	code := sw.code
	if code == 0 {
		code = http.StatusOK
	}
	m.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
}

// statusWriter remembers the status code of a response.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
