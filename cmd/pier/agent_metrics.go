package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/metrics"
)

// metricsSettings are the agent's Prometheus metrics: served at /metrics on
// the HTTP API, and on Addr too when it is set.
type metricsSettings struct {
	Addr    string // -metrics-addr, metrics_addr: a listener of its own; "": none
	Disable bool   // telemetry.disable: no collectors at all, /metrics answers 404
}

// telemetryFile is the config file's telemetry section.
type telemetryFile struct {
	Disable     *bool   // no metrics at all (default false)
	MetricsAddr *string // the same as the top-level metrics_addr
}

func (c *agentConfig) mergeMetrics(fc *fileConfig) {
	if fc.MetricsAddr != nil {
		c.Metrics.Addr = *fc.MetricsAddr
	}
	if t := fc.Telemetry; t != nil {
		if t.MetricsAddr != nil {
			c.Metrics.Addr = *t.MetricsAddr
		}
		if t.Disable != nil {
			c.Metrics.Disable = *t.Disable
		}
	}
}

func (c *agentConfig) validateMetrics() error {
	if c.Metrics.Addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(c.Metrics.Addr)
	if err != nil {
		return usageError{fmt.Sprintf("-metrics-addr %q: want host:port or :port", c.Metrics.Addr)}
	}
	if host != "" && net.ParseIP(host) == nil {
		return usageError{fmt.Sprintf("-metrics-addr %q: %q is not an IP address", c.Metrics.Addr, host)}
	}
	var pn int
	if _, err := fmt.Sscan(port, &pn); err != nil || pn < 0 || pn > 65535 {
		return usageError{fmt.Sprintf("-metrics-addr %q: port out of range (0-65535; 0: any free port)", c.Metrics.Addr)}
	}
	if c.Metrics.Disable {
		return usageError{"-metrics-addr is set but telemetry.disable turns metrics off"}
	}
	return nil
}

// agentMetrics is the agent's Prometheus registry and, with -metrics-addr,
// the listener that serves it alone.
type agentMetrics struct {
	reg     *prometheus.Registry // nil: metrics are off
	handler http.Handler
	ln      net.Listener
}

// Registerer is what each part's Config takes: nil when metrics are off,
// which turns every part's collectors off.
func (m *agentMetrics) Registerer() prometheus.Registerer {
	if m.reg == nil {
		return nil
	}
	return m.reg
}

func newAgentMetrics(s metricsSettings, log *slog.Logger) (*agentMetrics, error) {
	m := &agentMetrics{}
	if s.Disable {
		return m, nil
	}
	m.reg = metrics.NewRegistry()
	m.handler = metrics.Handler(m.reg, log)
	if s.Addr != "" {
		ln, err := net.Listen("tcp", s.Addr)
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		m.ln = ln
	}
	return m, nil
}

// addr is the -metrics-addr listener's address, "" without one.
func (m *agentMetrics) addr() string {
	if m.ln == nil {
		return ""
	}
	return m.ln.Addr().String()
}

// run serves /metrics on the -metrics-addr listener until ctx ends.
func (m *agentMetrics) run(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.handler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(m.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("metrics: shutdown: %w", err)
	}
	<-errc
	return nil
}
