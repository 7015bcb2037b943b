package gossip

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// members returns pier_members{status} from g.
func membersBy(t *testing.T, g prometheus.Gatherer, status string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pier_members" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == status {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no pier_members{status=%q}", status)
	return 0
}

func TestMetrics(t *testing.T) {
	p0, p1 := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	n0 := startNode(t, "n0", opts{tweak: func(c *Config) { c.Registerer = p0 }})
	n1 := startNode(t, "n1", opts{join: []string{n0.g.Addr()}, tweak: func(c *Config) { c.Registerer = p1 }})
	register(t, n1, "redis1", 8000)
	waitFor(t, n0.reg, 30*time.Second, "redis1 replicated", hasInstance("n1", "redis1", true))

	// Join events reach the member list through the inbox, asynchronously.
	for name, p := range map[string]prometheus.Gatherer{"n0": p0, "n1": p1} {
		deadline := time.Now().Add(30 * time.Second)
		for membersBy(t, p, "alive") != 2 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := membersBy(t, p, "alive"); got != 2 {
			t.Errorf("%s: pier_members{alive} = %v, want 2", name, got)
		}
	}
	if got := testutil.ToFloat64(n1.g.met.queued); got < 1 {
		t.Errorf("n1 queued %v broadcasts, want at least 1", got)
	}
	// The join is a push/pull: n1 sent its state and received n0's.
	if s, r := testutil.ToFloat64(n1.g.met.pushSent), testutil.ToFloat64(n1.g.met.pushRecv); s < 1 || r < 1 {
		t.Errorf("n1 push/pull sent %v received %v, want at least 1 each", s, r)
	}
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(n1.g.met.sent) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // memberlist gossips on its own timer
	}
	if got := testutil.ToFloat64(n1.g.met.sent); got < 1 {
		t.Errorf("n1 sent %v broadcasts, want at least 1", got)
	}

	n1.stop() // a graceful leave
	for membersBy(t, p0, "left") != 1 && time.Now().Before(deadline.Add(10*time.Second)) {
		time.Sleep(10 * time.Millisecond)
	}
	if got, alive := membersBy(t, p0, "left"), membersBy(t, p0, "alive"); got != 1 || alive != 1 {
		t.Errorf("after n1 left, n0 sees left=%v alive=%v, want 1 and 1", got, alive)
	}
	if problems, err := testutil.GatherAndLint(p0); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}
