package lb

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// lbMetrics are the balancer's metrics. The per-backend and per-pool gauges
// are read from the current table when Prometheus scrapes, so Pick does no
// metric work at all and a backend or service that leaves the catalog
// leaves /metrics with the table that dropped it.
type lbMetrics struct {
	updates prometheus.Counter
	lag     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, b *Balancer) (*lbMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &lbMetrics{
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "table_updates_total",
			Help: "Load-balancing tables built from a new catalog snapshot.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "table_update_lag_seconds",
			Help:    "Time from a catalog change to the load-balancing table that reflects it.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}),
	}
	tc := tableCollector{b: b,
		inflight: prometheus.NewDesc("pier_proxy_upstream_inflight",
			"Requests in progress on an instance (host:port) of a service.", []string{"service", "instance"}, nil),
		healthy: prometheus.NewDesc("pier_proxy_pool_healthy_instances",
			"Instances of a service that take traffic (in the catalog and healthy).", []string{"service"}, nil),
	}
	for _, c := range []prometheus.Collector{m.updates, m.lag, tc} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// rebuilt records a table built from a snapshot published at made.
func (m *lbMetrics) rebuilt(made time.Time) {
	if m == nil {
		return
	}
	m.updates.Inc()
	if !made.IsZero() {
		m.lag.Observe(time.Since(made).Seconds())
	}
}

// tableCollector reports the gauges of the current table.
type tableCollector struct {
	b                 *Balancer
	inflight, healthy *prometheus.Desc
}

func (c tableCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inflight
	ch <- c.healthy
}

func (c tableCollector) Collect(ch chan<- prometheus.Metric) {
	t := c.b.Table()
	if t == nil {
		return
	}
	for _, st := range t.services {
		p := t.pools[st.Name]
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, float64(p.Len()), st.Name)
		for _, m := range p.Members() {
			ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(m.Backend.InFlight()), st.Name, m.Backend.Addr())
		}
	}
}
