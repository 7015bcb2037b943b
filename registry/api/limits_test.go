package api_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

// TestBlockingQueryFlood opens as many blocking queries from one client IP
// as limits.http_max_conns_per_client allows, and checks that the next
// request from that IP is refused with 429 and a message naming the limit,
// that another IP is still served, that the queries already open are
// unaffected (they answer when the catalog changes), that the limit frees
// up as they finish, and that no goroutine is left behind.
func TestBlockingQueryFlood(t *testing.T) {
	const limit = 5
	before := goleak.IgnoreCurrent()

	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	prom := prometheus.NewPedanticRegistry()
	acfg := api.DefaultConfig()
	acfg.Registry, acfg.Registerer = reg, prom
	acfg.MaxConnsPerClient = limit
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	base := "http://" + ln.Addr().String()
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: 2 * limit}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	get := func(ctx context.Context, c *http.Client, path string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	type result struct {
		code int
		err  error
	}
	// flood opens limit blocking queries and waits until all are blocked.
	flood := func(ctx context.Context) <-chan result {
		idx := reg.Snapshot().Index()
		results := make(chan result, limit)
		for range limit {
			go func() {
				code, _, err := get(ctx, client, "/v1/catalog/services?index="+itoa(idx)+"&wait=60s")
				results <- result{code, err}
			}()
		}
		waitGauge(t, prom, limit)
		return results
	}

	results := flood(context.Background())
	code, body, err := get(context.Background(), client, "/v1/agent/self")
	if err != nil || code != http.StatusTooManyRequests || !strings.Contains(body, "limits.http_max_conns_per_client") {
		t.Errorf("request %d from the same IP: %d %q %v, want 429 naming the limit", limit+1, code, body, err)
	}
	// Another client IP is counted on its own.
	other := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	if code, body, err := get(context.Background(), other, "/v1/agent/self"); err != nil {
		t.Logf("cannot dial from 127.0.0.2 here, not checked: %v", err)
	} else if code != 200 {
		t.Errorf("a request from another IP: %d %q", code, body)
	}
	other.CloseIdleConnections()

	// The open queries are unaffected: a change answers them all.
	s := registry.Service{ID: "web", Name: "web", Port: 80}
	if err := reg.RegisterService(s, nil, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	for range limit {
		if r := <-results; r.err != nil || r.code != 200 {
			t.Errorf("a blocking query within the limit: %d %v", r.code, r.err)
		}
	}
	waitGauge(t, prom, 0)

	// Once they are done, the same IP may open as many again (and clients
	// that give up free their places).
	if code, body, err := get(context.Background(), client, "/v1/agent/self"); err != nil || code != 200 {
		t.Errorf("after the queries ended: %d %q %v", code, body, err)
	}
	qctx, qcancel := context.WithCancel(context.Background())
	results = flood(qctx)
	qcancel()
	for range limit {
		<-results
	}
	waitGauge(t, prom, 0)
	if code, _, err := get(context.Background(), client, "/v1/agent/self"); err != nil || code != 200 {
		t.Errorf("after the queries were cancelled: %d %v", code, err)
	}

	want := `
# HELP pier_api_requests_limited_total Requests refused with 429 because their client had limits.http_max_conns_per_client requests in progress.
# TYPE pier_api_requests_limited_total counter
pier_api_requests_limited_total 1
`
	if err := testutil.GatherAndCompare(prom, strings.NewReader(want), "pier_api_requests_limited_total"); err != nil {
		t.Error(err)
	}

	// Everything the flood started ends with it.
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	done <- nil // for the deferred cleanup
	tr.CloseIdleConnections()
	goleak.VerifyNone(t, before)
}
