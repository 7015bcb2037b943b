package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Helpers here carry a "bench" prefix so that they cannot collide with those
// of other test files in the package.

// benchRegistry returns a registry holding n services, each with a passing
// TTL check, 10 instances a name (svc-0 ... svc-<n/10-1>). They come from
// config so that filling the catalog writes nothing.
func benchRegistry(b *testing.B, n int) *registry.Registry {
	b.Helper()
	cfg := registry.DefaultConfig()
	cfg.NodeName = "bench-node"
	cfg.Address = "127.0.0.1"
	reg, err := registry.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		id, name := fmt.Sprintf("svc-%d-%d", i/10, i%10), fmt.Sprintf("svc-%d", i/10)
		s := registry.Service{
			ID: id, Name: name, Tags: []string{"prod", "v1"}, Address: "10.1.0.1", Port: 1024 + i%50000,
			Weights: registry.Weights{Passing: 1, Warning: 1}, Meta: map[string]string{"version": "1"},
		}
		c := registry.Check{
			CheckID: "service:" + id, Name: "Service '" + name + "' check", Status: registry.StatusPassing,
			ServiceID: id, ServiceName: name, Definition: registry.CheckDefinition{TTL: registry.Duration(30 * time.Second)},
		}
		if err := reg.RegisterService(s, []registry.Check{c}, registry.SourceConfig); err != nil {
			b.Fatal(err)
		}
	}
	return reg
}

func benchServer(b *testing.B, reg *registry.Registry) *Server {
	b.Helper()
	s, err := New(Config{Registry: reg})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// benchListen serves s on a real loopback listener until the benchmark ends
// and returns its base URL and a client that keeps enough connections.
func benchListen(b *testing.B, s *Server) (string, *http.Client) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, ln) }()
	tr := &http.Transport{MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute, DisableCompression: true}
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
		tr.CloseIdleConnections()
	})
	return "http://" + ln.Addr().String(), &http.Client{Transport: tr, Timeout: 90 * time.Second}
}

// benchBodies prepares registration bodies for n services in two versions, so
// that each call changes what it registers: call i gives service i%n.
func benchBodies(n int) func(i int) []byte {
	var vs [2][][]byte
	for v := range vs {
		for i := range n {
			vs[v] = append(vs[v], fmt.Appendf(nil,
				`{"ID":"svc-%d-%d","Name":"svc-%d","Tags":["prod","v%d"],"Address":"10.1.0.1","Port":%d,"Meta":{"version":"%d"},`+
					`"Check":{"TTL":"30s","Status":"passing"}}`, i/10, i%10, i/10, v+2, 2000+i, v+2))
		}
	}
	return func(i int) []byte { return vs[(i/n)%2][i%n] }
}

// BenchmarkHTTPRegister is PUT /v1/agent/service/register into a catalog of
// 10,000 services: through the handler alone, and through a real loopback
// connection.
func BenchmarkHTTPRegister(b *testing.B) {
	b.Run("handler", func(b *testing.B) {
		s := benchServer(b, benchRegistry(b, 10_000))
		body := benchBodies(1000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			req := httptest.NewRequest(http.MethodPut, "/v1/agent/service/register", bytes.NewReader(body(i)))
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
		}
	})
	b.Run("loopback", func(b *testing.B) {
		base, client := benchListen(b, benchServer(b, benchRegistry(b, 10_000)))
		body := benchBodies(1000)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			req, _ := http.NewRequest(http.MethodPut, base+"/v1/agent/service/register", bytes.NewReader(body(i)))
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}

// BenchmarkHTTPHealthService is GET /v1/health/service/<name> for one name
// of 10 instances out of 10,000 services.
func BenchmarkHTTPHealthService(b *testing.B) {
	const path = "/v1/health/service/svc-500"
	b.Run("handler", func(b *testing.B) {
		s := benchServer(b, benchRegistry(b, 10_000))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			req := httptest.NewRequest(http.MethodGet, path, nil)
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"svc-500-9"`)) {
				b.Fatalf("status %d: %.200s", rec.Code, rec.Body)
			}
		}
	})
	b.Run("passing/handler", func(b *testing.B) {
		s := benchServer(b, benchRegistry(b, 10_000))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			req := httptest.NewRequest(http.MethodGet, path+"?passing&tag=prod", nil)
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"svc-500-9"`)) {
				b.Fatalf("status %d: %.200s", rec.Code, rec.Body)
			}
		}
	})
	b.Run("loopback", func(b *testing.B) {
		base, client := benchListen(b, benchServer(b, benchRegistry(b, 10_000)))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			resp, err := client.Get(base + path)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || n == 0 {
				b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
			}
		}
	})
}

// benchStackBuf is reused by benchParked so that polling makes no garbage
// for the measured part to collect.
var benchStackBuf = make([]byte, 1<<20)

// benchParked waits until n goroutines are parked in a select or channel
// receive inside fn (a function name as runtime stacks print it), so that a
// measurement starts with every blocking query really asleep in the server.
func benchParked(b *testing.B, fn string, n int) {
	b.Helper()
	buf := benchStackBuf
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := runtime.Stack(buf, true)
		if m == len(buf) {
			buf = make([]byte, 2*len(buf))
			benchStackBuf = buf
			continue
		}
		parked := 0
		for _, g := range bytes.Split(buf[:m], []byte("\n\n")) {
			head, _, _ := strings.Cut(string(g), "\n")
			if (strings.Contains(head, "[select") || strings.Contains(head, "[chan receive")) && bytes.Contains(g, []byte(fn)) {
				parked++
			}
		}
		if parked >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d goroutines parked in %s", parked, n, fn)
		}
		runtime.Gosched()
	}
}

type benchResult struct {
	at    time.Time
	index uint64
	err   error
}

// benchBlockingGet is one client's blocking query; it records when the whole
// answer has arrived and the index it carries.
func benchBlockingGet(client *http.Client, url string, out *benchResult, done *sync.WaitGroup) {
	defer done.Done()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		out.err = err
		return
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		out.err = err
		return
	}
	out.at = time.Now()
	if resp.StatusCode != http.StatusOK {
		out.err = fmt.Errorf("status %d", resp.StatusCode)
		return
	}
	out.index, out.err = strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
}

// BenchmarkHTTPBlockingWake: 10,000 services; 100 HTTP clients on a real
// loopback listener blocked in GET /v1/health/service/shared?index=N&wait=60s;
// one registration of an instance of "shared" (PUT over HTTP); time until all
// 100 answers have arrived. The goal is under 50ms.
func BenchmarkHTTPBlockingWake(b *testing.B) {
	const clients = 100
	reg := benchRegistry(b, 10_000)
	base, client := benchListen(b, benchServer(b, reg))
	put := func(body string) {
		b.Helper()
		req, _ := http.NewRequest(http.MethodPut, base+"/v1/agent/service/register", strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("register: status %d", resp.StatusCode)
		}
	}
	for i := range 3 {
		put(fmt.Sprintf(`{"ID":"shared-%d","Name":"shared","Port":%d,"Check":{"TTL":"30s","Status":"passing"}}`, i, 9000+i))
	}
	bodies := []string{
		`{"ID":"shared-0","Name":"shared","Port":9101,"Check":{"TTL":"30s","Status":"passing"}}`,
		`{"ID":"shared-0","Name":"shared","Port":9102,"Check":{"TTL":"30s","Status":"passing"}}`,
	}
	var first benchResult
	var wg sync.WaitGroup
	wg.Add(1)
	benchBlockingGet(client, base+"/v1/health/service/shared", &first, &wg)
	if first.err != nil || first.index == 0 {
		b.Fatalf("first query: index %d, %v", first.index, first.err)
	}
	index := first.index

	var total, worst time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		res := make([]benchResult, clients)
		var done sync.WaitGroup
		done.Add(clients)
		url := fmt.Sprintf("%s/v1/health/service/shared?index=%d&wait=60s", base, index)
		for c := range clients {
			go benchBlockingGet(client, url, &res[c], &done)
		}
		benchParked(b, "api.(*Server).block(", clients)
		b.StartTimer()

		start := time.Now()
		put(bodies[i%2])
		done.Wait()

		b.StopTimer()
		var last time.Time
		for c, r := range res {
			if r.err != nil {
				b.Fatalf("client %d: %v", c, r.err)
			}
			if r.index <= index || r.index != res[0].index {
				b.Fatalf("client %d woke with index %d (was %d, client 0 has %d)", c, r.index, index, res[0].index)
			}
			if r.at.After(last) {
				last = r.at
			}
		}
		index = res[0].index
		d := last.Sub(start)
		total += d
		worst = max(worst, d)
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()*1e3/float64(b.N), "ms/wake-all")
	b.ReportMetric(worst.Seconds()*1e3, "ms/wake-all-max")
}

// BenchmarkHTTPKVWriteCatalogWatchers: a catalog of 1,000 services watched
// by 100 clients, each looping on GET /v1/catalog/services?index=N&wait=60s
// as fabio or Traefik do; b.N KV writes (PUT over HTTP). Reports the catalog
// answers sent per KV write (woken/op): 0, since a KV write moves no catalog
// index; each one would be a refetch of the whole catalog by a watcher.
func BenchmarkHTTPKVWriteCatalogWatchers(b *testing.B) {
	const clients = 100
	reg := benchRegistry(b, 1000)
	base, client := benchListen(b, benchServer(b, reg))
	var first benchResult
	var one sync.WaitGroup
	one.Add(1)
	benchBlockingGet(client, base+"/v1/catalog/services", &first, &one)
	if first.err != nil {
		b.Fatal(first.err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var woken atomic.Int64
	var done sync.WaitGroup
	for range clients {
		done.Add(1)
		go func() {
			defer done.Done()
			index := first.index
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/catalog/services?index=%d&wait=60s", base, index), nil)
				resp, err := client.Do(req)
				if err != nil {
					return // cancelled
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if ctx.Err() != nil {
					return
				}
				woken.Add(1)
				index, _ = strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
			}
		}()
	}
	defer func() { cancel(); done.Wait() }()
	benchParked(b, "api.(*Server).block(", clients)
	woken.Store(0)
	b.ResetTimer()
	for i := range b.N {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v1/kv/app/key%d", base, i%100), strings.NewReader("v"))
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64(woken.Load())/float64(b.N), "woken/op")
}
