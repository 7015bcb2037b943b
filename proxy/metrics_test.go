package proxy

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"
)

func TestMetrics(t *testing.T) {
	api, shop := newBackend(t, "api"), newBackend(t, "shop")
	reg := prometheus.NewPedanticRegistry()
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
		c.Registerer = reg
	})
	e.register("api-1", "api", api.addr, 1)
	e.register("shop-1", "shop", shop.addr, 1, "urlprefix-/shop")
	// An instance that refuses connections: requests to it are retried on
	// the other one, and it is ejected (max_fails 1).
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close()
	e.register("shop-2", "shop", deadAddr, 1, "urlprefix-/shop") // a tag route reaches only the instances with its tag
	e.synced()

	for range 3 {
		if code, _ := e.get("", "/api/x"); code != 200 {
			t.Fatalf("GET /api/x: %d", code)
		}
	}
	// Ties are broken at random: send until the dead instance was picked
	// once (and then ejected), and a few more.
	m := e.p.met
	shopped := 0
	for i := 0; i < 200 && (testutil.ToFloat64(m.ejections.WithLabelValues("shop")) == 0 || i < 4); i++ {
		if code, _ := e.get("", "/shop/y"); code != 200 {
			t.Fatalf("GET /shop/y: %d", code)
		}
		shopped++
	}
	e.get("", "/nowhere")

	check := func(name string, c prometheus.Collector, want float64) {
		t.Helper()
		if got := testutil.ToFloat64(c); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("requests{/api/,api,200}", m.requests.WithLabelValues("/api/", "api", "200"), 3)
	check("requests{/shop,shop,200}", m.requests.WithLabelValues("/shop", "shop", "200"), float64(shopped))
	check("requests{'','',404}", m.requests.WithLabelValues("", "", "404"), 1)
	check("ejections{shop}", m.ejections.WithLabelValues("shop"), 1)
	check("retries{shop}", m.retries.WithLabelValues("shop"), 1)
	check("ejections{api}", m.ejections.WithLabelValues("api"), 0)
	if n := testutil.CollectAndCount(m.duration); n != 3 {
		t.Errorf("%d duration series, want 3 (api, shop, no route)", n)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP pier_proxy_open_connections Client connections open to the proxy.
# TYPE pier_proxy_open_connections gauge
pier_proxy_open_connections 1
`), "pier_proxy_open_connections"); err != nil {
		t.Error(err)
	}

	// The tag route goes with its service, and its series with it.
	e.deregister("shop-1")
	e.deregister("shop-2")
	e.synced()
	e.p.syncRoutes()
	if n := testutil.CollectAndCount(m.requests); n != 2 {
		t.Errorf("%d request series after shop left, want 2 (api and no route)", n)
	}
	if n := testutil.CollectAndCount(m.duration); n != 2 {
		t.Errorf("%d duration series after shop left, want 2", n)
	}
	if n := testutil.CollectAndCount(m.ejections); n != 1 {
		t.Errorf("%d ejection series after shop left, want 1 (api)", n)
	}
	if got, _ := testutil.GatherAndCount(reg); got == 0 {
		t.Error("the registry gathers nothing")
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

func TestMetricsOffByDefault(t *testing.T) {
	e := newEnv(t, nil)
	if e.p.met != nil {
		t.Fatal("metrics without a Registerer")
	}
	e.get("", "/nowhere") // and nothing panics
}

// TestMetricsAndAccessLogAllocateNothing: counting a request, timing it
// and writing its access log line allocate nothing once warm.
func TestMetricsAndAccessLogAllocateNothing(t *testing.T) {
	b := newBackend(t, "api")
	for _, format := range []string{AccessLogJSON, AccessLogCombined} {
		e := newEnv(t, func(c *Config) {
			c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
			c.Registerer = prometheus.NewRegistry()
			c.AccessLog, c.AccessLogTo = format, io.Discard
		})
		e.register("api-1", "api", b.addr, 1)
		e.synced()
		e.p.syncRoutes()
		r := e.p.routes.Load().lookup(nil, []byte("/api/x"))
		if r == nil || r.stats == nil {
			t.Fatalf("route: %+v", r)
		}
		var ctx fasthttp.RequestCtx
		ctx.Init(&fasthttp.Request{}, &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5000}, nil)
		ctx.Request.Header.SetHost("example.com")
		ctx.Request.Header.SetRequestURI("/api/users/7?x=1")
		ctx.Request.Header.Set("User-Agent", "test")
		ctx.Response.SetStatusCode(200)
		be := e.bal.Pool("api").Members()[0].Backend
		one := func() {
			ent := e.p.alog.begin(ctx.Request.Header.RequestURI())
			e.p.access(&ctx, ent, time.Now(), r, be, 2)
		}
		one()
		if n := testing.AllocsPerRun(1000, one); n != 0 {
			t.Errorf("%s: metrics and access log allocate %v times per request", format, n)
		}
		if got := testutil.ToFloat64(e.p.met.requests.WithLabelValues("/api/", "api", "200")); got != 1002 {
			t.Errorf("requests = %v, want 1002", got)
		}
	}
}

// BenchmarkProxyMetrics is BenchmarkProxy with metrics and a JSON access
// log on, to compare the two.
func BenchmarkProxyMetrics(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.WriteString("hello") }}
	go srv.Serve(ln)
	defer srv.Shutdown()
	t := &testing.T{}
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
		c.Registerer = prometheus.NewRegistry()
		c.AccessLog, c.AccessLogTo = AccessLogJSON, io.Discard
	})
	defer e.close()
	e.register("api-1", "api", ln.Addr().String(), 1)
	benchGets(b, e.addr)
}

// BenchmarkMetricsDone is the metrics work of one request: count it by
// code on its route and time it, from every core at once.
func BenchmarkMetricsDone(b *testing.B) {
	m, err := newMetrics(prometheus.NewRegistry(), func() int32 { return 0 })
	if err != nil {
		b.Fatal(err)
	}
	rt := &routeTable{all: []*route{{Route: Route{Path: "/api/", Service: "api"}}}}
	m.attach(rt)
	r := rt.all[0]
	start := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.done(r, 200, start, 1)
		}
	})
}
