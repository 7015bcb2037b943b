package proxy

import (
	"io"
	"net"
	"testing"

	"github.com/valyala/fasthttp"
)

// BenchmarkProxyH2C measures a whole request through the proxy over h2c
// (one client connection, streams in parallel) to a fasthttp backend on
// loopback: the HTTP/2 side of BenchmarkProxy.
func BenchmarkProxyH2C(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.WriteString("hello") }}
	go srv.Serve(ln)
	defer srv.Shutdown()
	t := &testing.T{}
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
	})
	defer e.close()
	e.register("api-1", "api", ln.Addr().String(), 1)
	c := h2cClient(t, e.addr)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get("http://x/api/hello")
			if err != nil || resp.StatusCode != 200 {
				b.Errorf("%v", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
