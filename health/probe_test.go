package health

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pier-dev/pier/registry"
)

// flipServer is a loopback HTTP server whose answer a test changes.
type flipServer struct {
	*httptest.Server
	code atomic.Int32
	body atomic.Pointer[string]
	hits atomic.Int64
	last atomic.Pointer[http.Request]
}

func newFlipServer(t *testing.T) *flipServer {
	t.Helper()
	s := &flipServer{}
	s.code.Store(200)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		r.Body.Close()
		s.last.Store(r)
		w.WriteHeader(int(s.code.Load()))
		if b := s.body.Load(); b != nil {
			w.Write([]byte(*b))
		} else {
			w.Write([]byte("hello"))
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func testRunner(t *testing.T, cfg Config) *Runner {
	t.Helper()
	cfg.Catalog = nopCatalog{}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

type nopCatalog struct{}

func (nopCatalog) Snapshot() *registry.Snapshot                      { return nil }
func (nopCatalog) Self() registry.Node                               { return registry.Node{} }
func (nopCatalog) UpdateCheck(string, registry.Status, string) error { return nil }
func (nopCatalog) DeregisterService(string) error                    { return nil }
func (nopCatalog) SaveCheckState(registry.CheckState) error          { return nil }
func (nopCatalog) RestoredCheckState(string) (registry.CheckState, bool) {
	return registry.CheckState{}, false
}

func TestProbeHTTP(t *testing.T) {
	s := newFlipServer(t)
	r := testRunner(t, Config{})
	ctx := context.Background()
	d := &registry.CheckDefinition{HTTP: s.URL + "/health"}
	for _, c := range []struct {
		code int
		want registry.Status
	}{{200, registry.StatusPassing}, {204, registry.StatusPassing}, {299, registry.StatusPassing},
		{429, registry.StatusWarning}, {300, registry.StatusCritical}, {404, registry.StatusCritical},
		{500, registry.StatusCritical}, {503, registry.StatusCritical}} {
		s.code.Store(int32(c.code))
		st, out := r.probeHTTP(ctx, r.http, d)
		if st != c.want || !strings.HasPrefix(out, "HTTP GET "+d.HTTP+": ") || !strings.Contains(out, http.StatusText(c.code)) {
			t.Errorf("status %d: %s %q, want %s", c.code, st, out, c.want)
		}
	}
	// Method, headers (Host among them) and body are sent as given.
	s.code.Store(200)
	d = &registry.CheckDefinition{HTTP: s.URL + "/x", Method: "POST", Body: `{"a":1}`,
		Header: map[string][]string{"x-token": {"t1", "t2"}, "Host": {"svc.example"}}}
	if st, out := r.probeHTTP(ctx, r.http, d); st != registry.StatusPassing || out != "HTTP POST "+d.HTTP+": 200 OK Output: hello" {
		t.Errorf("POST: %s %q", st, out)
	}
	req := s.last.Load()
	if req.Method != "POST" || req.Host != "svc.example" || strings.Join(req.Header["X-Token"], ",") != "t1,t2" || req.UserAgent() != userAgent {
		t.Errorf("request: %s host=%s headers=%v", req.Method, req.Host, req.Header)
	}
	// Only the first 4 KiB of the body is kept.
	big := strings.Repeat("x", 10000)
	s.body.Store(&big)
	_, out := r.probeHTTP(ctx, r.http, &registry.CheckDefinition{HTTP: s.URL})
	if n := strings.Count(out, "x"); n != 4096 {
		t.Errorf("output holds %d bytes of the body, want 4096", n)
	}
	// Nobody listening, and a target that hangs past the timeout.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if st, out := r.probeHTTP(ctx, r.http, &registry.CheckDefinition{HTTP: "http://" + addr}); st != registry.StatusCritical || !strings.Contains(out, "refused") {
		t.Errorf("refused: %s %q", st, out)
	}
	hang := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer hs.Close()
	defer close(hang)
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if st, out := r.probeHTTP(tctx, r.http, &registry.CheckDefinition{HTTP: hs.URL}); st != registry.StatusCritical || !strings.Contains(out, "deadline exceeded") {
		t.Errorf("hanging target: %s %q", st, out)
	}
}

func TestProbeHTTPS(t *testing.T) {
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake the test makes fail
	s.StartTLS()
	defer s.Close()
	r := testRunner(t, Config{})
	d := registry.CheckDefinition{HTTP: s.URL}
	if st, out := r.probeHTTP(context.Background(), r.http, &d); st != registry.StatusCritical || !strings.Contains(out, "certificate") {
		t.Errorf("self-signed without TLSSkipVerify: %s %q", st, out)
	}
	d.TLSSkipVerify = true
	c := newHTTPClient(&http.Transport{TLSClientConfig: tlsConfig(d)})
	if st, out := r.probeHTTP(context.Background(), c, &d); st != registry.StatusPassing {
		t.Errorf("TLSSkipVerify: %s %q", st, out)
	}
}

func TestProbeTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if st, out := probeTCP(context.Background(), addr); st != registry.StatusPassing || out != "TCP connect "+addr+": Success" {
		t.Errorf("open port: %s %q", st, out)
	}
	ln.Close()
	if st, out := probeTCP(context.Background(), addr); st != registry.StatusCritical || !strings.Contains(out, "refused") {
		t.Errorf("closed port: %s %q", st, out)
	}
}

// grpcServer serves grpc.health.v1 on loopback; the test sets statuses.
func grpcServer(t *testing.T) (string, *grpchealth.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := grpchealth.NewServer()
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return ln.Addr().String(), hs
}

func TestProbeGRPC(t *testing.T) {
	addr, hs := grpcServer(t)
	hs.SetServingStatus("api", healthpb.HealthCheckResponse_SERVING)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct {
		target string
		want   registry.Status
		out    string
	}{
		{addr, registry.StatusPassing, "gRPC check " + addr + ": success"},
		{addr + "/api", registry.StatusPassing, "success"},
		{addr + "/other", registry.StatusCritical, "NotFound"},
	} {
		if st, out := probeGRPC(ctx, &registry.CheckDefinition{GRPC: c.target}); st != c.want || !strings.Contains(out, c.out) {
			t.Errorf("%s: %s %q", c.target, st, out)
		}
	}
	hs.SetServingStatus("api", healthpb.HealthCheckResponse_NOT_SERVING)
	if st, out := probeGRPC(ctx, &registry.CheckDefinition{GRPC: addr + "/api"}); st != registry.StatusCritical || !strings.Contains(out, "NOT_SERVING") {
		t.Errorf("NOT_SERVING: %s %q", st, out)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	if st, out := probeGRPC(ctx, &registry.CheckDefinition{GRPC: closed}); st != registry.StatusCritical || !strings.Contains(out, "refused") {
		t.Errorf("closed port: %s %q", st, out)
	}
}

func TestProbeScript(t *testing.T) {
	r := testRunner(t, Config{EnableScriptChecks: true})
	ctx := context.Background()
	for _, c := range []struct {
		script string
		want   registry.Status
		out    string
	}{
		{"echo ok; echo err >&2", registry.StatusPassing, "ok\nerr\n"},
		{"echo slow; exit 1", registry.StatusWarning, "slow\n"},
		{"exit 2", registry.StatusCritical, ""},
	} {
		if st, out := r.probeScript(ctx, []string{"/bin/sh", "-c", c.script}, time.Second); st != c.want || out != c.out {
			t.Errorf("%q: %s %q", c.script, st, out)
		}
	}
	if st, out := r.probeScript(ctx, []string{"/bin/sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x"}, time.Second); st != registry.StatusPassing || len(out) != 4096 {
		t.Errorf("long output: %s, %d bytes", st, len(out))
	}
	if st, out := r.probeScript(ctx, []string{"/nonexistent/check"}, time.Second); st != registry.StatusCritical || !strings.Contains(out, "no such file") {
		t.Errorf("missing program: %s %q", st, out)
	}
	// A script that hangs (with a child holding its output) is killed with
	// its whole process group at the timeout.
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	st, out := r.probeScript(tctx, []string{"/bin/sh", "-c", "sleep 30 & sleep 30"}, 200*time.Millisecond)
	if st != registry.StatusCritical || !strings.Contains(out, "Timed out (200ms)") {
		t.Errorf("hanging script: %s %q", st, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("hanging script returned after %v", d)
	}
}

func TestThresholds(t *testing.T) {
	const P, W, C = registry.StatusPassing, registry.StatusWarning, registry.StatusCritical
	cases := []struct {
		name                string
		success, warn, crit int
		in                  []registry.Status
		want                string // reported statuses, "-" for nothing
	}{
		{"defaults report everything", 0, 0, 0, []registry.Status{P, C, W, C, P}, "P C W C P"},
		{"success before passing", 3, 0, 0, []registry.Status{P, P, P, P, C, P}, "- - P P C -"},
		{"failures before critical", 0, 0, 3, []registry.Status{P, C, C, C, C, P, C}, "P - - C C P -"},
		{"failures before warning", 0, 1, 3, []registry.Status{C, C, C, P, C}, "W W C P W"},
		{"warning counts as success", 2, 0, 2, []registry.Status{W, W, C, W, C, C}, "- W - - - C"},
	}
	for _, c := range cases {
		th := newThresholds(registry.CheckDefinition{SuccessBeforePassing: c.success, FailuresBeforeWarning: c.warn, FailuresBeforeCritical: c.crit})
		var got []string
		for _, st := range c.in {
			out, ok := th.apply(st)
			if !ok {
				got = append(got, "-")
				continue
			}
			got = append(got, strings.ToUpper(string(out[0])))
		}
		if g := strings.Join(got, " "); g != c.want {
			t.Errorf("%s: %s, want %s", c.name, g, c.want)
		}
	}
}
