package metrics

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
)

// The stream is a sequence of Consul metric summaries, one per interval,
// each seeing the values of its moment; consul/api's MetricsStream reads it.
func TestConsulStream(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "pier", Subsystem: "test", Name: "ticks_total", Help: "ticks"})
	reg.MustRegister(c)
	srv := httptest.NewServer(ConsulStreamHandler(ConsulHandler(reg, nil), 50*time.Millisecond, nil))
	defer srv.Close()
	client, err := consulapi.NewClient(&consulapi.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	body, err := client.Agent().MetricsStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	counter := func(m consulapi.MetricsInfo) float64 {
		for _, s := range m.Counters {
			if s.Name == "pier_test_ticks_total" {
				return s.Sum
			}
		}
		return -1
	}
	var first consulapi.MetricsInfo
	if err := dec.Decode(&first); err != nil {
		t.Fatalf("first summary: %v", err)
	}
	if len(first.Gauges) == 0 || first.Timestamp == "" {
		t.Errorf("first summary has no gauges or timestamp: %+v", first)
	}
	c.Add(5)
	// A later summary shows the change (the next one may have been built
	// before it).
	for i := 0; ; i++ {
		var m consulapi.MetricsInfo
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("summary %d: %v", i+2, err)
		}
		if counter(m) >= 5 {
			break
		}
		if i > 100 {
			t.Fatal("no summary shows the counter's new value")
		}
	}
}
