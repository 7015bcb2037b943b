package proxy

import (
	"io"
	"testing"
)

// BenchmarkProxyH2C measures a whole request through the proxy over h2c
// (one client connection, streams in parallel) to a fasthttp backend on
// loopback: the HTTP/2 side of BenchmarkProxy.
func BenchmarkProxyH2C(b *testing.B) {
	e := benchEnv(b, func(c *Config) { c.H2C = true })
	defer e.close()
	c := h2cClient(e.t, e.addr)
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
