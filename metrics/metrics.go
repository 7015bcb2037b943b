package metrics

import (
	"log/slog"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns an empty registry with the Go runtime and process
// collectors, for one agent. It is never the global DefaultRegisterer.
//
// Both are built at the first scrape: the Go collector describes every
// runtime/metrics sample when it is made, a tenth of a millisecond that
// an agent which is never scraped, or not yet, need not spend to start.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(&lazyCollector{build: func() []prometheus.Collector {
		return []prometheus.Collector{
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		}
	}})
	return r
}

// lazyCollector is a collector built at its first Collect. It describes
// nothing, so the registry takes it unchecked: the consistency of what it
// collects is still checked at every gather.
type lazyCollector struct {
	build func() []prometheus.Collector
	once  sync.Once
	cs    []prometheus.Collector
}

func (l *lazyCollector) Describe(chan<- *prometheus.Desc) {}

func (l *lazyCollector) Collect(ch chan<- prometheus.Metric) {
	l.once.Do(func() { l.cs = l.build() })
	for _, c := range l.cs {
		c.Collect(ch)
	}
}

// Handler serves g in the Prometheus text format (or OpenMetrics when the
// scraper asks for it). A collector that fails is logged at warn level and
// the rest of the metrics are still served.
func Handler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            errorLog{log},
		ErrorHandling:       promhttp.ContinueOnError,
		EnableOpenMetrics:   true,
		MaxRequestsInFlight: 4, // a scrape storm must not eat the agent
	})
}

// errorLog adapts slog to promhttp's Logger.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Println(v ...any) {
	if l.log != nil {
		l.log.Warn("metrics: gathering", "err", slog.AnyValue(v))
	}
}
