package proxy

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pier-dev/pier/history"
)

func TestQuantileInterpolatesInsideTheBucket(t *testing.T) {
	inf := math.Inf(1)
	bounds := []float64{.01, .1, 1, inf}
	cases := []struct {
		q       float64
		buckets []float64
		want    float64
	}{
		{0.5, []float64{10, 0, 0, 0}, .005},      // half of the first bucket
		{0.5, []float64{0, 10, 0, 0}, .055},      // half-way from .01 to .1
		{0.99, []float64{50, 49, 1, 0}, .1},      // the 99th of 100 is the last in the second bucket
		{0.99, []float64{0, 0, 0, 4}, 1},         // beyond the highest bound: that bound
		{0.5, []float64{0, 0, 0, 0}, math.NaN()}, // nothing measured
		{0.5, []float64{1, 2}, math.NaN()},       // shapes disagree
	}
	for _, c := range cases {
		got := quantile(c.q, bounds, c.buckets)
		if math.IsNaN(c.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-c.want) > 1e-9) {
			t.Errorf("quantile(%v, %v) = %v, want %v", c.q, c.buckets, got, c.want)
		}
	}
}

// historyAnswer is the part of /v1/pier/history the tests read.
type historyAnswer struct {
	Series []struct {
		Kind, Name string
		Points     [][]*float64
	}
}

func readHistory(t testing.TB, st *history.Store, query string) historyAnswer {
	t.Helper()
	rec := httptest.NewRecorder()
	st.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/pier/history"+query, nil))
	var a historyAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("%v\n%s", err, rec.Body)
	}
	return a
}

// TestHistoryFromTheProxysCounters: a point holds the requests since the
// last point by status class, as a rate over the interval, their latency,
// and the healthy instances, per route and summed per service.
func TestHistoryFromTheProxysCounters(t *testing.T) {
	api := newBackend(t, "api")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api"}, {Path: "/v2/", Service: "api"}, {Path: "/down/", Service: "down"}}
		c.Registerer = prometheus.NewPedanticRegistry()
	})
	e.register("api-1", "api", api.addr, 1)
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close()
	e.register("down-1", "down", deadAddr, 1)
	e.synced()
	st, err := history.New(history.Config{Interval: 5 * time.Second, Points: 10, Sources: []history.Source{e.p}})
	if err != nil {
		t.Fatal(err)
	}
	st.Sample(time.Now(), 5*time.Second)
	for range 10 {
		e.get("", "/api/x")
	}
	for range 5 {
		e.get("", "/v2/x")
		e.get("", "/down/x")
	}
	st.Sample(time.Now(), 5*time.Second)
	a := readHistory(t, st, "")
	got := map[string][]*float64{}
	for _, s := range a.Series {
		got[s.Kind+" "+s.Name] = s.Points[len(s.Points)-1]
	}
	val := func(k string, f int) float64 {
		p := got[k]
		if p == nil || p[f] == nil {
			return math.NaN()
		}
		return *p[f]
	}
	if v := val("route /api/", history.Req2xx); v != 2 {
		t.Errorf("/api/ 2xx/s = %v, want 10 requests over 5s = 2", v)
	}
	if v := val("service api", history.Req2xx); v != 3 {
		t.Errorf("service api 2xx/s = %v, want 15/5 = 3", v)
	}
	if v := val("route /down/", history.Req5xx); v != 1 {
		t.Errorf("/down/ 5xx/s = %v, want 1", v)
	}
	if v := val("route /api/", history.Healthy); v != 1 {
		t.Errorf("/api/ healthy = %v", v)
	}
	if p50, p99 := val("route /api/", history.P50), val("route /api/", history.P99); !(p50 > 0 && p99 >= p50 && p99 < 10) {
		t.Errorf("/api/ latency p50 %v p99 %v", p50, p99)
	}
	// No traffic: zero rates, no latency.
	st.Sample(time.Now(), 5*time.Second)
	a = readHistory(t, st, "?kind=route&name=/api/")
	last := a.Series[0].Points[len(a.Series[0].Points)-1]
	if *last[history.Req2xx] != 0 || last[history.P50] != nil {
		t.Errorf("an idle interval: %v", last)
	}
}

// BenchmarkHistory200Routes: what the UI's charts cost with 200 routes. A
// point of every route (sample, every 5 s), the first answer of the routes
// page (full, 15 minutes of 200 routes) and the answers after it (since,
// once a second), against the peer it replaces for a page that wants
// history: one scrape of /metrics for the same 200 routes, which the UI
// fetches every second for its live numbers.
func BenchmarkHistory200Routes(b *testing.B) {
	api := newBackend(&testing.T{}, "api") // a bare T runs no cleanups: closed below
	defer api.srv.Close()
	reg := prometheus.NewRegistry()
	routes := make([]Route, 200)
	for i := range routes {
		routes[i] = Route{Path: fmt.Sprintf("/r%03d/", i), Service: fmt.Sprintf("svc%03d", i%50)}
	}
	t := &testing.T{}
	e := newEnv(t, func(c *Config) { c.Routes = routes; c.Registerer = reg })
	defer e.close()
	for i := range 50 {
		e.register(fmt.Sprintf("svc%03d-1", i), fmt.Sprintf("svc%03d", i), api.addr, 1)
	}
	e.synced()
	for i := range routes {
		e.get("", routes[i].Path+"x")
		if i%7 == 0 {
			e.get("", routes[i].Path+"x")
		}
	}
	st, _ := history.New(history.Config{Interval: 5 * time.Second, Points: 180, Sources: []history.Source{e.p}})
	for range 180 {
		st.Sample(time.Now(), 5*time.Second)
	}
	serve := func(b *testing.B, h http.Handler, url string) {
		req := httptest.NewRequest("GET", url, nil)
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			n = rec.Body.Len()
		}
		b.ReportMetric(float64(n), "bytes/answer")
	}
	b.Run("sample", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st.Sample(time.Now(), 5*time.Second)
		}
	})
	b.Run("full", func(b *testing.B) { serve(b, st.Handler(), "/v1/pier/history?kind=route") })
	b.Run("since", func(b *testing.B) {
		var a struct{ Tick uint64 }
		rec := httptest.NewRecorder()
		st.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/pier/history", nil))
		json.Unmarshal(rec.Body.Bytes(), &a)
		serve(b, st.Handler(), fmt.Sprintf("/v1/pier/history?kind=route&since=%d", a.Tick-1))
	})
	b.Run("peer-metrics-scrape", func(b *testing.B) {
		serve(b, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), "/metrics")
	})
}
