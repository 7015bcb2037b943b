package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHandlerServesRuntimeAndOwnMetrics(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pier", Subsystem: "test", Name: "things_total", Help: "things"})
	reg.MustRegister(c)
	c.Add(3)
	srv := httptest.NewServer(Handler(reg, nil))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"pier_test_things_total 3", "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("missing %q in:\n%.2000s", want, b)
		}
	}
}

func TestRegistriesAreIndependent(t *testing.T) {
	// Two agents in one process each have their own registry: registering
	// the same metric in both must not collide (no global registerer).
	for range 2 {
		reg := NewRegistry()
		reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "pier_same_total", Help: "h"}))
	}
}
