package health

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pier-dev/pier/registry"
)

func TestMetrics(t *testing.T) {
	s := newFlipServer(t)
	synctest.Test(t, func(t *testing.T) {
		prom := prometheus.NewPedanticRegistry()
		reg, _ := startRunner(t, Config{Registerer: prom})
		register(t, reg, `{"ID":"web1","Name":"web","Check":{"HTTP":"`+s.URL+`/health","Interval":"10s"}}`)
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusPassing, "")
		s.code.Store(500)
		after(10 * time.Second)
		wantCheck(t, reg, "service:web1", registry.StatusCritical, "")

		// serfHealth (the node's own check) passes; the HTTP check is critical.
		want := `
# HELP pier_health_checks This node's checks by status (passing, warning, critical, maintenance).
# TYPE pier_health_checks gauge
pier_health_checks{status="critical"} 1
pier_health_checks{status="maintenance"} 0
pier_health_checks{status="passing"} 1
pier_health_checks{status="warning"} 0
# HELP pier_health_check_status_changes_total Changes of a check's status reported by this agent's checks, by the new status.
# TYPE pier_health_check_status_changes_total counter
pier_health_check_status_changes_total{status="critical"} 1
pier_health_check_status_changes_total{status="passing"} 1
`
		if err := testutil.GatherAndCompare(prom, strings.NewReader(want), "pier_health_checks", "pier_health_check_status_changes_total"); err != nil {
			t.Error(err)
		}
		if n := testutil.CollectAndCount(prom, "pier_health_check_duration_seconds"); n != len(checkTypes) {
			t.Errorf("%d duration series, want one per type", n)
		}
		mfs, _ := prom.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "pier_health_check_duration_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				typ, n := m.GetLabel()[0].GetValue(), m.GetHistogram().GetSampleCount()
				if (typ == "http") != (n == 2) || (typ != "http" && n != 0) {
					t.Errorf("duration{type=%s}: %d probes", typ, n)
				}
			}
		}
	})
}
