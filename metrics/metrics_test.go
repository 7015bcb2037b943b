package metrics

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// The runtime and process metrics, built at the first scrape, are there at
// every scrape.
func TestHandlerServesRuntimeAndOwnMetrics(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pier", Subsystem: "test", Name: "things_total", Help: "things"})
	reg.MustRegister(c)
	c.Add(3)
	srv := httptest.NewServer(Handler(reg, nil))
	defer srv.Close()
	for range 2 {
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"pier_test_things_total 3", "go_goroutines", "go_gc_duration_seconds", "process_cpu_seconds_total"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("missing %q in:\n%.2000s", want, b)
			}
		}
	}
}

// Two agents in one process each have their own registry: the same metric
// registers in both, and each /metrics shows its own agent's value and
// nothing the other registered (no global registerer).
func TestRegistriesAreIndependent(t *testing.T) {
	scrape := func(reg *prometheus.Registry) string {
		t.Helper()
		srv := httptest.NewServer(Handler(reg, nil))
		defer srv.Close()
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	var regs [2]*prometheus.Registry
	for i := range regs {
		regs[i] = NewRegistry()
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: "pier_same_total", Help: "h"})
		if err := regs[i].Register(c); err != nil {
			t.Fatalf("registering the same metric in agent %d's registry: %v", i+1, err)
		}
		c.Add(float64(10 * (i + 1)))
	}
	only := prometheus.NewGauge(prometheus.GaugeOpts{Name: "pier_only_in_first", Help: "h"})
	regs[0].MustRegister(only)
	first, second := scrape(regs[0]), scrape(regs[1])
	if !strings.Contains(first, "\npier_same_total 10\n") || !strings.Contains(first, "pier_only_in_first") {
		t.Errorf("first agent's metrics:\n%.3000s", first)
	}
	if !strings.Contains(second, "\npier_same_total 20\n") || strings.Contains(second, "pier_only_in_first") {
		t.Errorf("second agent's metrics:\n%.3000s", second)
	}
}

// ConsulHandler's JSON decodes into the consul/api client's MetricsInfo;
// a NaN gauge (which JSON cannot hold) is 0, and a histogram is a sample
// with its count, sum and mean.
func TestConsulHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "t_nan"})
	g.Set(math.NaN())
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "t_total"}, []string{"code"})
	c.WithLabelValues("200").Add(3)
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "t_seconds"})
	h.Observe(1)
	h.Observe(3)
	reg.MustRegister(g, c, h)
	srv := httptest.NewServer(ConsulHandler(reg, nil))
	defer srv.Close()

	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var mi consulapi.MetricsInfo
	if err := json.NewDecoder(resp.Body).Decode(&mi); err != nil {
		t.Fatalf("decoding as consul/api MetricsInfo: %v", err)
	}
	resp.Body.Close()
	var own []consulapi.GaugeValue
	for _, g := range mi.Gauges {
		if !strings.HasPrefix(g.Name, "consul.runtime.") {
			own = append(own, g)
		}
	}
	if len(own) != 1 || own[0].Name != "t_nan" || own[0].Value != 0 {
		t.Errorf("gauges %+v", own)
	}
	if len(mi.Counters) != 1 || mi.Counters[0].Count != 3 || mi.Counters[0].Sum != 3 || mi.Counters[0].Labels["code"] != "200" {
		t.Errorf("counters %+v", mi.Counters)
	}
	if len(mi.Samples) != 1 || mi.Samples[0].Count != 2 || mi.Samples[0].Sum != 4 || mi.Samples[0].Mean != 2 {
		t.Errorf("samples %+v", mi.Samples)
	}

	resp, err = http.Get(srv.URL + "?format=prometheus")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `t_total{code="200"} 3`) {
		t.Errorf("?format=prometheus:\n%s", b)
	}
}
