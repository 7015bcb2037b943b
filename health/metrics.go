package health

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
)

// checkTypes are the values of the type label, one per kind of probe.
var checkTypes = [...]string{"http", "tcp", "grpc", "script", "docker"}

// healthMetrics are the checker's metrics. The number of checks by status
// is read from the catalog when Prometheus scrapes; probe durations and
// status changes are counted as they happen, on children made once.
type healthMetrics struct {
	duration [len(checkTypes)]prometheus.Observer
	changes  *prometheus.CounterVec // status: the new status
}

func newMetrics(reg prometheus.Registerer, r *Runner) (*healthMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "pier", Subsystem: "health", Name: "check_duration_seconds",
		Help:    "Time a probe took, by check type (http, tcp, grpc, script, docker).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"type"})
	m := &healthMetrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "health", Name: "check_status_changes_total",
			Help: "Changes of a check's status reported by this agent's checks, by the new status.",
		}, []string{"status"}),
	}
	for i, typ := range checkTypes {
		m.duration[i] = dur.WithLabelValues(typ)
	}
	checks := checksCollector{r: r, desc: prometheus.NewDesc("pier_health_checks",
		"This node's checks by status (passing, warning, critical, maintenance).", []string{"status"}, nil)}
	for _, c := range []prometheus.Collector{dur, m.changes, checks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// probed records a probe of the check definition d that took seconds.
func (m *healthMetrics) probed(d *registry.CheckDefinition, seconds float64) {
	if m == nil {
		return
	}
	i := -1
	switch {
	case d.HTTP != "":
		i = 0
	case d.TCP != "":
		i = 1
	case d.GRPC != "":
		i = 2
	case len(d.Args) > 0 && d.DockerContainerID != "":
		i = 4
	case len(d.Args) > 0:
		i = 3
	}
	if i >= 0 {
		m.duration[i].Observe(seconds)
	}
}

func (m *healthMetrics) changed(to registry.Status) {
	if m != nil {
		m.changes.WithLabelValues(string(to)).Inc()
	}
}

// checksCollector counts this node's checks in the current snapshot.
type checksCollector struct {
	r    *Runner
	desc *prometheus.Desc
}

func (c checksCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c checksCollector) Collect(ch chan<- prometheus.Metric) {
	n := map[registry.Status]int{}
	snap := c.r.cat.Snapshot()
	if snap == nil {
		return
	}
	snap.Checks(func(e *registry.CheckEntry) bool {
		if e.Node == c.r.node {
			n[e.Status]++
		}
		return true
	})
	for _, st := range []registry.Status{registry.StatusPassing, registry.StatusWarning, registry.StatusCritical, registry.StatusMaintenance} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n[st]), string(st))
	}
}
