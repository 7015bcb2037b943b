package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// tcpMetrics are the TCP proxy's metrics, by route (its listen address or
// server name) and service. A connection looks its children up once, when
// its route is made.
type tcpMetrics struct {
	connsVec       *prometheus.CounterVec
	openVec        *prometheus.GaugeVec
	bytesVec       *prometheus.CounterVec
	failuresVec    *prometheus.CounterVec
	unavailableVec *prometheus.CounterVec
	endedVec       *prometheus.CounterVec
	refusedVec     *prometheus.CounterVec
}

type tcpStats struct {
	conns, connectFailures, unavailable, idled, drained prometheus.Counter
	open                                                prometheus.Gauge
	in, out                                             prometheus.Counter
}

func newTCPMetrics(reg prometheus.Registerer) (*tcpMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	rs := []string{"route", "service"}
	m := &tcpMetrics{
		connsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "tcp_connections_total",
			Help: "TCP route connections proxied to an instance, by route (listen address, or server name for passthrough) and service.",
		}, rs),
		openVec: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "tcp_open_connections",
			Help: "TCP route connections open now.",
		}, rs),
		bytesVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "tcp_bytes_total",
			Help: "Bytes proxied on TCP routes; direction in is client to instance, out is instance to client.",
		}, []string{"route", "service", "direction"}),
		failuresVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "tcp_connect_failures_total",
			Help: "Failed connections to an instance of a TCP route (each counts towards max_fails; the next instance is tried).",
		}, rs),
		unavailableVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "tcp_unavailable_total",
			Help: "Client connections closed because no instance of the route could be reached.",
		}, rs),
		endedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "tcp_ended_total",
			Help: "TCP route connections the proxy ended: reason idle (tcp_idle_timeout) or drained (tcp_drain_timeout after the instance left the pool).",
		}, []string{"route", "service", "reason"}),
		refusedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "pier", Subsystem: "proxy", Name: "tcp_passthrough_refused_total",
			Help: "Connections closed on a passthrough-only listener: reason no_sni, unknown_sni, bad_hello or hello_timeout; too_many on the TLS listener when max_conns connections are already being read.",
		}, []string{"listen", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.connsVec, m.openVec, m.bytesVec, m.failuresVec, m.unavailableVec, m.endedVec, m.refusedVec} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *tcpMetrics) route(route, service string) *tcpStats {
	if m == nil {
		return nil
	}
	return &tcpStats{
		conns:           m.connsVec.WithLabelValues(route, service),
		open:            m.openVec.WithLabelValues(route, service),
		in:              m.bytesVec.WithLabelValues(route, service, "in"),
		out:             m.bytesVec.WithLabelValues(route, service, "out"),
		connectFailures: m.failuresVec.WithLabelValues(route, service),
		unavailable:     m.unavailableVec.WithLabelValues(route, service),
		idled:           m.endedVec.WithLabelValues(route, service, "idle"),
		drained:         m.endedVec.WithLabelValues(route, service, "drained"),
	}
}

func (m *tcpMetrics) opened(s *tcpStats) {
	if s != nil {
		s.conns.Inc()
		s.open.Inc()
	}
}

func (m *tcpMetrics) closed(s *tcpStats) {
	if s != nil {
		s.open.Dec()
	}
}

func (m *tcpMetrics) bytes(s *tcpStats, in bool, n int) {
	if s == nil || n <= 0 {
		return
	}
	if in {
		s.in.Add(float64(n))
	} else {
		s.out.Add(float64(n))
	}
}

func (m *tcpMetrics) connectFailed(s *tcpStats) {
	if s != nil {
		s.connectFailures.Inc()
	}
}

func (m *tcpMetrics) unavailable(s *tcpStats) {
	if s != nil {
		s.unavailable.Inc()
	}
}

func (m *tcpMetrics) idled(s *tcpStats) {
	if s != nil {
		s.idled.Inc()
	}
}

func (m *tcpMetrics) drained(s *tcpStats) {
	if s != nil {
		s.drained.Inc()
	}
}

func (m *tcpMetrics) refused(listen, reason string) {
	if m != nil {
		m.refusedVec.WithLabelValues(listen, reason).Inc()
	}
}
