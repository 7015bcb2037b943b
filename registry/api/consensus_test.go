package api_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry/api"
)

// silentServer accepts connections and never answers, as a paused server
// (SIGSTOP) or one behind a partition that drops packets does.
func silentServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); io.Copy(io.Discard, c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// A request forwarded to a server that never answers fails with a 500
// once its bound passes (three RPCHoldTimeouts, and a blocking query's
// wait), instead of hanging for as long as the server is silent.
func TestForwardToSilentServerFails(t *testing.T) {
	addr := silentServer(t)
	c := startRaftAgent(t, "client", false, func() []string { return []string{addr} }, func(cfg *api.Config) {
		cfg.RPCHoldTimeout = 200 * time.Millisecond
	})
	hc := &http.Client{Timeout: 20 * time.Second}
	for _, tc := range []struct {
		method, path string
		atLeast      time.Duration
	}{
		{"GET", "/v1/kv/k", 600 * time.Millisecond},
		{"PUT", "/v1/kv/k", 600 * time.Millisecond},
		{"GET", "/v1/kv/k?index=5&wait=1s", 1600 * time.Millisecond},
	} {
		req, _ := http.NewRequest(tc.method, c.base+tc.path, strings.NewReader("v"))
		start := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != 500 || !strings.Contains(string(body), "did not answer within") {
			t.Errorf("%s %s: %d %q, want a 500 saying the server did not answer", tc.method, tc.path, resp.StatusCode, body)
		}
		if took < tc.atLeast {
			t.Errorf("%s %s: failed after %v, before its bound %v", tc.method, tc.path, took, tc.atLeast)
		}
		t.Logf("%s %s: %d after %v", tc.method, tc.path, resp.StatusCode, took.Round(time.Millisecond))
	}
}
