package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/lb"
	"github.com/pier-dev/pier/registry"
)

// env is a registry, a balancer and a proxy serving on 127.0.0.1:0.
type env struct {
	t     *testing.T
	reg   *registry.Registry
	bal   *lb.Balancer
	p     *Proxy
	addr  string
	http  *http.Client
	ctx   context.Context
	close func()
}

func newEnv(t *testing.T, tweak func(*Config)) *env {
	t.Helper()
	return newEnvLB(t, nil, tweak)
}

// newEnvLB is newEnv with the balancer's config tweaked too.
func newEnvLB(t *testing.T, lbTweak func(*lb.Config), tweak func(*Config)) *env {
	t.Helper()
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address = "n1", "127.0.0.1"
	reg, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	lc := lb.DefaultConfig()
	lc.Source = reg
	if lbTweak != nil {
		lbTweak(&lc)
	}
	bal, err := lb.New(lc)
	if err != nil {
		t.Fatal(err)
	}
	pc := DefaultConfig()
	pc.Balancer = bal
	pc.Engine = testEngine
	pc.HTTP2.Server = testH2Server
	t.Logf("proxy engine: %s, HTTP/2 server: %s", pc.Engine, pc.HTTP2.Server)
	if tweak != nil {
		tweak(&pc)
	}
	p, err := New(pc)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); bal.Run(ctx) }()
	go func() {
		defer wg.Done()
		if err := p.Run(ctx, ln); err != nil {
			t.Errorf("proxy.Run: %v", err)
		}
	}()
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
	e := &env{t: t, reg: reg, bal: bal, p: p, addr: ln.Addr().String(), ctx: ctx,
		http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
	e.close = func() { cancel(); wg.Wait(); tr.CloseIdleConnections() }
	t.Cleanup(e.close)
	return e
}

// register registers a service instance at addr (host:port).
func (e *env) register(id, name, addr string, weight int, tags ...string) {
	e.t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	pn, _ := strconv.Atoi(port)
	s := registry.Service{ID: id, Name: name, Address: host, Port: pn, Tags: tags, Weights: registry.Weights{Passing: weight, Warning: 1}}
	if err := e.reg.RegisterService(s, nil, registry.SourceAPI); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) deregister(id string) {
	e.t.Helper()
	if err := e.reg.DeregisterService(id); err != nil {
		e.t.Fatal(err)
	}
}

// synced waits, on the tables' Changed channels, until the balancer has
// applied the registry's latest change.
func (e *env) synced() {
	e.t.Helper()
	want := e.reg.Snapshot().Index()
	timeout := time.After(10 * time.Second)
	for {
		tb := e.bal.Table()
		if tb.Index() >= want {
			e.routesFollow(tb)
			return
		}
		select {
		case <-tb.Changed():
		case <-timeout:
			e.t.Fatalf("balancer stuck at index %d, want %d", tb.Index(), want)
		}
	}
}

// routesFollow waits until the proxy's Run loop has rebuilt its route
// table from tb: until then a request may still match a route that tb no
// longer has (a deleted KV route, say).
func (e *env) routesFollow(tb *lb.Table) {
	e.t.Helper()
	eventually.True(e.t, 10*time.Second, fmt.Sprintf("the route table follows the balancer's table at index %d", tb.Index()), func() bool {
		if rt := e.p.routes.Load(); rt != nil && rt.lbt == tb {
			return true
		}
		return e.bal.Table() != tb // newer again: the caller's index is reached either way
	})
}

// get sends a request through the proxy and returns status and body.
func (e *env) do(method, host, path string, body io.Reader, hdr ...string) (int, string, http.Header) {
	e.t.Helper()
	req, err := http.NewRequest(method, "http://"+e.addr+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.http.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s%s: %v", method, host, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func (e *env) get(host, path string) (int, string) {
	e.t.Helper()
	code, body, _ := e.do("GET", host, path, nil)
	return code, body
}

// echo is what the test backends answer: who they are and what they got.
type echo struct {
	Name   string
	Method string
	URI    string
	Host   string
	Header http.Header
	Body   int64
}

// backend is a real HTTP server on loopback that answers with an echo.
type backend struct {
	name  string
	addr  string
	hits  atomic.Int64
	srv   *http.Server
	ln    net.Listener
	delay func(*http.Request) // runs before answering, if set
}

func newBackend(t *testing.T, name string) *backend {
	t.Helper()
	return serveBackend(t, name, listen(t))
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serveEach runs serve on each connection ln accepts, in a goroutine of
// its own, until the test ends: then ln is closed and every serve waited
// for.
func serveEach(t *testing.T, ln net.Listener, serve func(net.Conn)) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

func serveBackend(t *testing.T, name string, ln net.Listener) *backend {
	b := &backend{name: name, addr: ln.Addr().String(), ln: ln}
	b.srv = &http.Server{Handler: b, ReadHeaderTimeout: 10 * time.Second}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	n, _ := io.Copy(io.Discard, r.Body)
	if size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64); err == nil {
		// A download of size bytes, written in pieces.
		w.Header().Set("Content-Type", "application/octet-stream")
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
		io.Copy(w, io.LimitReader(zeros{}, size))
		return
	}
	if b.delay != nil {
		b.delay(r)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(echo{Name: b.name, Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header, Body: n})
}

// stop shuts the backend down gracefully: requests in progress finish.
func (b *backend) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b.srv.Shutdown(ctx)
}

func decode(t *testing.T, body string) echo {
	t.Helper()
	var e echo
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("not an echo: %v: %q", err, body)
	}
	return e
}

// deadPort returns a loopback address nothing listens on.
func deadPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func intp(i int) *int { return &i }

var _ = fmt.Sprint
