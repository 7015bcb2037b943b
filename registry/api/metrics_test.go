package api_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

func TestMetrics(t *testing.T) {
	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	prom := prometheus.NewPedanticRegistry()
	acfg := api.DefaultConfig()
	acfg.Registry, acfg.Registerer = reg, prom
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	get := func(path string) int {
		t.Helper()
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	get("/v1/health/service/web")
	get("/v1/health/service/db")
	get("/v1/agent/service/nope")
	get("/v1/no/such/path")
	req, _ := http.NewRequest("PUT", hs.URL+"/v1/agent/service/register", strings.NewReader(`{"Name":"web","Port":80}`))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("register: %v %v", err, resp)
	}

	// A blocking query is counted while it waits.
	done := make(chan int)
	idx := reg.Snapshot().Index()
	go func() { done <- get("/v1/catalog/services?index=" + itoa(idx) + "&wait=30s") }()
	waitGauge(t, prom, 1)
	req, _ = http.NewRequest("PUT", hs.URL+"/v1/agent/service/deregister/web", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("deregister: %v %v", err, resp)
	}
	if code := <-done; code != 200 {
		t.Fatalf("blocking query: %d", code)
	}
	waitGauge(t, prom, 0)

	want := `
# HELP pier_api_requests_total HTTP API requests by endpoint (the route pattern, such as "GET /v1/catalog/service/{name}"; "other" when none matched) and status code.
# TYPE pier_api_requests_total counter
pier_api_requests_total{code="200",endpoint="GET /v1/catalog/services"} 1
pier_api_requests_total{code="200",endpoint="GET /v1/health/service/{name}"} 2
pier_api_requests_total{code="200",endpoint="PUT /v1/agent/service/deregister/{id...}"} 1
pier_api_requests_total{code="200",endpoint="PUT /v1/agent/service/register"} 1
pier_api_requests_total{code="404",endpoint="GET /v1/agent/service/{id...}"} 1
pier_api_requests_total{code="404",endpoint="other"} 1
`
	if err := testutil.GatherAndCompare(prom, strings.NewReader(want), "pier_api_requests_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(prom); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

func waitGauge(t *testing.T, g prometheus.Gatherer, want float64) {
	t.Helper()
	eventually.True(t, 10*time.Second, fmt.Sprintf("pier_api_blocking_queries at %v", want), func() bool {
		mfs, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "pier_api_blocking_queries" && mf.GetMetric()[0].GetGauge().GetValue() == want {
				return true
			}
		}
		return false
	})
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
