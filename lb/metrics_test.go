package lb

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gauge returns the value of the series of name with labels, and whether
// it exists.
func gauge(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

func TestMetrics(t *testing.T) {
	r := newRegistry(t)
	reg := prometheus.NewPedanticRegistry()
	cfg := DefaultConfig()
	cfg.Source, cfg.Registerer = r, reg
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	register(t, r, "a1", "api", 9001, 1)
	register(t, r, "a2", "api", 9002, 1)
	b.Rebuild()

	be := b.Pool("api").Pick(nil)
	want := map[string]float64{"127.0.0.1:9001": 0, "127.0.0.1:9002": 0}
	want[be.Addr()] = 1
	for addr, n := range want {
		if got, ok := gauge(t, reg, "pier_proxy_upstream_inflight", map[string]string{"service": "api", "instance": addr}); !ok || got != n {
			t.Errorf("inflight{api,%s} = %v (present %v), want %v", addr, got, ok, n)
		}
	}
	be.Release()
	if got, _ := gauge(t, reg, "pier_proxy_pool_healthy_instances", map[string]string{"service": "api"}); got != 2 {
		t.Errorf("healthy{api} = %v, want 2", got)
	}
	updates := testutil.ToFloat64(b.met.updates)
	if updates < 2 {
		t.Errorf("table updates = %v, want at least 2", updates)
	}
	if n := testutil.CollectAndCount(b.met.lag); n != 1 {
		t.Errorf("lag series: %d", n)
	}

	// An instance that leaves takes its series with it; a service that
	// leaves takes its pool's.
	if err := r.DeregisterService("a2"); err != nil {
		t.Fatal(err)
	}
	b.Rebuild()
	if _, ok := gauge(t, reg, "pier_proxy_upstream_inflight", map[string]string{"service": "api", "instance": "127.0.0.1:9002"}); ok {
		t.Error("inflight of a deregistered instance still reported")
	}
	if got, _ := gauge(t, reg, "pier_proxy_pool_healthy_instances", map[string]string{"service": "api"}); got != 1 {
		t.Errorf("healthy{api} = %v, want 1", got)
	}
	if err := r.DeregisterService("a1"); err != nil {
		t.Fatal(err)
	}
	b.Rebuild()
	if _, ok := gauge(t, reg, "pier_proxy_pool_healthy_instances", map[string]string{"service": "api"}); ok {
		t.Error("pool of a deregistered service still reported")
	}
	if got := testutil.ToFloat64(b.met.updates); got != updates+2 {
		t.Errorf("table updates = %v, want %v", got, updates+2)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

func TestMetricsTwoBalancers(t *testing.T) {
	// Two balancers on two registries do not collide: nothing is global.
	for i := range 2 {
		cfg := DefaultConfig()
		cfg.Source, cfg.Registerer = newRegistry(t), prometheus.NewRegistry()
		if _, err := New(cfg); err != nil {
			t.Fatal(fmt.Sprint(i, err))
		}
	}
}
