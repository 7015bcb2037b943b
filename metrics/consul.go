package metrics

import (
	"encoding/json"
	"log/slog"
	"math"
	"net/http"
	"runtime"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The shapes of Consul's /v1/agent/metrics (the consul/api client's
// MetricsInfo).
type consulMetrics struct {
	Timestamp string
	Gauges    []consulGauge
	Points    []struct{}
	Counters  []consulSampled
	Samples   []consulSampled
}

type consulGauge struct {
	Name   string
	Value  float64
	Labels map[string]string
}

type consulSampled struct {
	Name   string
	Count  uint64
	Rate   float64
	Sum    float64
	Min    float64
	Max    float64
	Mean   float64
	Stddev float64
	Labels map[string]string
}

// ConsulHandler serves /v1/agent/metrics as Consul does: with
// ?format=prometheus the same text as /metrics, so that a Prometheus job
// written for Consul agents scrapes pier unchanged; otherwise Consul's JSON.
// Consul's JSON holds the last 10 s interval of go-metrics; pier's metrics
// are Prometheus's, so a counter's Count and Sum are its total since the
// agent started, and a histogram or summary is a sample with its count, sum
// and mean (Min, Max and Stddev are not known and are 0). The Go runtime's
// gauges are there under Consul's names too (runtimeGauges).
func ConsulHandler(g prometheus.Gatherer, log *slog.Logger) http.Handler {
	prom := Handler(g, log)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch f := r.URL.Query().Get("format"); f {
		case "prometheus":
			prom.ServeHTTP(w, r)
			return
		case "":
		default:
			http.Error(w, "format: "+f+" is not a known format (prometheus, or none for JSON)", http.StatusBadRequest)
			return
		}
		fams, err := g.Gather()
		if err != nil && len(fams) == 0 {
			http.Error(w, "gathering metrics: "+err.Error(), http.StatusInternalServerError)
			return
		}
		out := consulMetrics{
			Timestamp: time.Now().UTC().Truncate(10 * time.Second).Format("2006-01-02 15:04:05 -0700 MST"),
			Gauges:    []consulGauge{}, Points: []struct{}{}, Counters: []consulSampled{}, Samples: []consulSampled{},
		}
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				name := f.GetName()
				switch f.GetType() {
				case dto.MetricType_GAUGE:
					out.Gauges = append(out.Gauges, consulGauge{Name: name, Value: finite(m.GetGauge().GetValue()), Labels: labels})
				case dto.MetricType_UNTYPED:
					out.Gauges = append(out.Gauges, consulGauge{Name: name, Value: finite(m.GetUntyped().GetValue()), Labels: labels})
				case dto.MetricType_COUNTER:
					v := finite(m.GetCounter().GetValue())
					c := consulSampled{Name: name, Count: uint64(max(v, 0)), Sum: v, Labels: labels}
					if v > 0 {
						c.Mean = 1 // as if it counted in ones, which is what a _total of pier's does
					}
					out.Counters = append(out.Counters, c)
				case dto.MetricType_HISTOGRAM:
					h := m.GetHistogram()
					out.Samples = append(out.Samples, sampled(name, h.GetSampleCount(), h.GetSampleSum(), labels))
				case dto.MetricType_SUMMARY:
					s := m.GetSummary()
					out.Samples = append(out.Samples, sampled(name, s.GetSampleCount(), s.GetSampleSum(), labels))
				}
			}
		}
		out.Gauges = append(out.Gauges, runtimeGauges()...)
		sort.SliceStable(out.Gauges, func(i, j int) bool { return out.Gauges[i].Name < out.Gauges[j].Name })
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
}

// runtimeGauges are the Go runtime's figures under the names Consul's
// go-metrics gives them (consul.runtime.*), which Consul's dashboards and
// alerts read from this endpoint; the Prometheus names (go_*) stay beside
// them.
func runtimeGauges() []consulGauge {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	g := func(name string, v uint64) consulGauge {
		return consulGauge{Name: "consul.runtime." + name, Value: float64(v), Labels: map[string]string{}}
	}
	return []consulGauge{
		g("num_goroutines", uint64(runtime.NumGoroutine())),
		g("alloc_bytes", ms.Alloc),
		g("sys_bytes", ms.Sys),
		g("malloc_count", ms.Mallocs),
		g("free_count", ms.Frees),
		g("heap_objects", ms.HeapObjects),
		g("total_gc_pause_ns", ms.PauseTotalNs),
		g("total_gc_runs", uint64(ms.NumGC)),
	}
}

func sampled(name string, n uint64, sum float64, labels map[string]string) consulSampled {
	s := consulSampled{Name: name, Count: n, Sum: finite(sum), Labels: labels}
	if n > 0 {
		s.Mean = s.Sum / float64(n)
	}
	return s
}

// finite maps NaN and the infinities, which JSON cannot hold, to 0.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}
