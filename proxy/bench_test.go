package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/valyala/fasthttp"
)

func benchRoutes() *routeTable {
	var rs []Route
	for i := range 100 {
		rs = append(rs, Route{Path: fmt.Sprintf("/svc%d/", i), Service: fmt.Sprint("svc", i), Strip: fmt.Sprintf("/svc%d", i)})
		rs = append(rs, Route{Host: fmt.Sprintf("host%d.example.com", i), Service: fmt.Sprint("host", i)})
	}
	rs = append(rs, Route{Path: "/api/", Service: "api", Strip: "/api"})
	return buildRoutes(rs, nil, false, 1, 0, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
}

func TestHotPathAllocsNothing(t *testing.T) {
	rt := benchRoutes()
	host, path := []byte("Host42.Example.com:8080"), []byte("/api/users/7")
	if r := rt.lookup(host, path); r == nil || r.Service != "host42" {
		t.Fatalf("lookup: %+v", r)
	}
	if r := rt.lookup([]byte("other"), path); r == nil || r.Service != "api" {
		t.Fatalf("lookup: %+v", r)
	}
	var buf [512]byte
	if n := testing.AllocsPerRun(1000, func() {
		r := rt.lookup(host, path)
		r = rt.lookup([]byte("nohost"), path)
		r.rewrite(buf[:0], path)
	}); n != 0 {
		t.Errorf("route lookup and rewrite allocate %v times", n)
	}

	// Setting the forwarding headers allocates nothing either, once the
	// request's buffers have grown.
	p := &Proxy{}
	var ctx fasthttp.RequestCtx
	ctx.Init(&fasthttp.Request{}, &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5000}, nil)
	fill := func() {
		ctx.Request.Header.SetHost("example.com")
		ctx.Request.Header.SetRequestURI("/api/users/7?x=1")
		ctx.Request.Header.Set("X-Forwarded-For", "192.0.2.1")
		ctx.Request.Header.Set("Connection", "keep-alive, X-Secret")
		ctx.Request.Header.Set("X-Secret", "s")
		ctx.Request.Header.Del("X-Request-Id")
		p.forwardHeaders(&ctx, false)
	}
	fill()
	if n := testing.AllocsPerRun(1000, fill); n != 0 {
		t.Errorf("forwarding headers allocate %v times", n)
	}
	plain := func() {
		ctx.Request.Header.Reset()
		ctx.Request.Header.SetHost("example.com")
		ctx.Request.Header.SetRequestURI("/api/users/7")
		p.forwardHeaders(&ctx, false)
		cleanResponse(&ctx.Response.Header)
	}
	plain()
	if n := testing.AllocsPerRun(1000, plain); n != 0 {
		t.Errorf("forwarding headers without hop-by-hop ones allocate %v times", n)
	}
}

func BenchmarkRouteLookup(b *testing.B) {
	rt := benchRoutes()
	host, path := []byte("www.example.com"), []byte("/api/users/7")
	b.ReportAllocs()
	for b.Loop() {
		if rt.lookup(host, path) == nil {
			b.Fatal("no route")
		}
	}
}

func BenchmarkRouteLookupHost(b *testing.B) {
	rt := benchRoutes()
	host, path := []byte("host42.example.com"), []byte("/x")
	b.ReportAllocs()
	for b.Loop() {
		if rt.lookup(host, path) == nil {
			b.Fatal("no route")
		}
	}
}

// benchGets sends GET /api/hello to the proxy at addr from parallel
// clients for the whole benchmark, each answer a 200.
func benchGets(b *testing.B, addr string) {
	c := &fasthttp.HostClient{Addr: addr, MaxConns: 64}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI("http://x/api/hello")
		for pb.Next() {
			if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
				b.Errorf("%v %d", err, resp.StatusCode())
				return
			}
		}
	})
}

// BenchmarkProxy measures a whole request through the proxy to a fasthttp
// backend on loopback.
func BenchmarkProxy(b *testing.B) {
	e := benchEnv(b, nil)
	defer e.close()
	benchGets(b, e.addr)
}

// benchEnv is a proxy with the route /api/ to one fasthttp backend on
// loopback that answers "hello"; the backend stops when b ends.
func benchEnv(b *testing.B, tweak func(*Config)) *env {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.WriteString("hello") }}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Shutdown() })
	t := &testing.T{}
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
		if tweak != nil {
			tweak(c)
		}
	})
	e.register("api-1", "api", ln.Addr().String(), 1)
	// Neither the set-up nor the shutdown (a graceful one waits for the
	// client's idle HTTP/2 connection) is the requests' cost.
	stop := e.close
	e.close = func() { b.StopTimer(); stop() }
	b.ResetTimer()
	return e
}
