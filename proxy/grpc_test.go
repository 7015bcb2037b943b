package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// testService is a gRPC instance: it answers with its name, and the
// headers and deadline it saw, so that a test can tell where a call went.
type testService struct {
	grpc_testing.UnimplementedTestServiceServer
	name  string
	calls atomic.Int64
	fail  codes.Code // answer every unary call with this code, when set

	inBytes atomic.Int64 // payload bytes received by the streaming calls
	inEnded atomic.Int64 // streaming calls returned
}

func (s *testService) UnaryCall(ctx context.Context, req *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	s.calls.Add(1)
	if s.fail != codes.OK {
		return nil, status.Error(s.fail, s.name+" fails")
	}
	if st := req.GetResponseStatus(); st != nil {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if d := md.Get("x-sleep"); len(d) > 0 {
		dur, _ := time.ParseDuration(d[0])
		select {
		case <-time.After(dur):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	dl := "none"
	if t, ok := ctx.Deadline(); ok {
		dl = time.Until(t).Round(time.Second).String()
	}
	grpc.SetHeader(ctx, metadata.Pairs("x-instance", s.name, "x-saw-xff", strings.Join(md.Get("x-forwarded-for"), ","), "x-saw-deadline", dl))
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "t-"+s.name))
	return &grpc_testing.SimpleResponse{ServerId: s.name, Payload: req.GetPayload()}, nil
}

func (s *testService) StreamingOutputCall(req *grpc_testing.StreamingOutputCallRequest, st grpc.ServerStreamingServer[grpc_testing.StreamingOutputCallResponse]) error {
	s.calls.Add(1)
	for _, p := range req.GetResponseParameters() {
		time.Sleep(time.Duration(p.GetIntervalUs()) * time.Microsecond)
		if err := st.Send(&grpc_testing.StreamingOutputCallResponse{Payload: &grpc_testing.Payload{Body: bytes.Repeat([]byte("x"), int(p.GetSize()))}}); err != nil {
			return err
		}
	}
	return nil
}

func (s *testService) StreamingInputCall(st grpc.ClientStreamingServer[grpc_testing.StreamingInputCallRequest, grpc_testing.StreamingInputCallResponse]) error {
	s.calls.Add(1)
	defer s.inEnded.Add(1)
	total := 0
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return st.SendAndClose(&grpc_testing.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(m.GetPayload().GetBody())
		s.inBytes.Add(int64(len(m.GetPayload().GetBody())))
	}
}

func (s *testService) FullDuplexCall(st grpc.BidiStreamingServer[grpc_testing.StreamingOutputCallRequest, grpc_testing.StreamingOutputCallResponse]) error {
	s.calls.Add(1)
	defer s.inEnded.Add(1)
	for {
		m, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		s.inBytes.Add(int64(len(m.GetPayload().GetBody())))
		if err := st.Send(&grpc_testing.StreamingOutputCallResponse{Payload: m.GetPayload()}); err != nil {
			return err
		}
	}
}

// grpcInstance is a real gRPC server on loopback.
type grpcInstance struct {
	svc  *testService
	srv  *grpc.Server
	addr string
	done chan struct{}
}

func startGRPC(t *testing.T, name, addr string, creds credentials.TransportCredentials) *grpcInstance {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // a port given back may take a moment to be free again
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	g := &grpcInstance{svc: &testService{name: name}, srv: grpc.NewServer(opts...), addr: ln.Addr().String(), done: make(chan struct{})}
	grpc_testing.RegisterTestServiceServer(g.srv, g.svc)
	go func() { g.srv.Serve(ln); close(g.done) }()
	t.Cleanup(g.stop)
	return g
}

func (g *grpcInstance) stop() {
	g.srv.GracefulStop()
	<-g.done
}

// grpcEnv is a proxy with h2c on, a gRPC route to service "grpc" and two
// instances of it.
type grpcEnv struct {
	*env
	inst []*grpcInstance
	reg  *prometheus.Registry
	log  *syncBuffer
}

func newGRPCEnv(t *testing.T, route Route, instances int) *grpcEnv {
	t.Helper()
	return newGRPCEnvWith(t, route, instances, nil)
}

func newGRPCEnvWith(t *testing.T, route Route, instances int, tweak func(*Config)) *grpcEnv {
	t.Helper()
	preg := prometheus.NewRegistry()
	logBuf := &syncBuffer{}
	if route.Path == "" {
		route.Path = "/grpc.testing.TestService/"
	}
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.Routes = []Route{route}
		c.Registerer = preg
		c.AccessLog = AccessLogJSON
		c.AccessLogTo = logBuf
		if tweak != nil {
			tweak(c)
		}
	})
	g := &grpcEnv{env: e, reg: preg, log: logBuf}
	for i := range instances {
		name := fmt.Sprintf("g%d", i+1)
		inst := startGRPC(t, name, "127.0.0.1:0", nil)
		g.inst = append(g.inst, inst)
		e.register(name, route.Service, inst.addr, 1)
	}
	e.synced()
	return g
}

func (g *grpcEnv) client(t *testing.T) grpc_testing.TestServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+g.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return grpc_testing.NewTestServiceClient(cc)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestGRPCUnary(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 2)
	c := g.client(t)
	seen := map[string]int{}
	for range 20 {
		var hdr, trl metadata.MD
		resp, err := c.UnaryCall(context.Background(), &grpc_testing.SimpleRequest{Payload: &grpc_testing.Payload{Body: []byte("hi")}},
			grpc.Header(&hdr), grpc.Trailer(&trl))
		if err != nil {
			t.Fatal(err)
		}
		seen[resp.ServerId]++
		if string(resp.GetPayload().GetBody()) != "hi" {
			t.Fatalf("payload %q", resp.GetPayload().GetBody())
		}
		if got := hdr.Get("x-saw-xff"); len(got) != 1 || got[0] != "127.0.0.1" {
			t.Fatalf("X-Forwarded-For at the instance: %v", got)
		}
		if got := trl.Get("x-trailer"); len(got) != 1 || got[0] != "t-"+resp.ServerId {
			t.Fatalf("trailers: %v", trl)
		}
	}
	if seen["g1"] == 0 || seen["g2"] == 0 {
		t.Errorf("calls went to %v", seen)
	}
	// An error status from the instance reaches the client as it was.
	_, err := c.UnaryCall(context.Background(), &grpc_testing.SimpleRequest{ResponseStatus: &grpc_testing.EchoStatus{Code: int32(codes.NotFound), Message: "no such thing"}})
	if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != "no such thing" {
		t.Fatalf("error status: %v", err)
	}
	if n := testutil.ToFloat64(g.p.met.grpc.WithLabelValues("/grpc.testing.TestService/", "grpc", "0")); n != 20 {
		t.Errorf("grpc_calls_total{grpc_status=0} = %v, want 20", n)
	}
	if n := testutil.ToFloat64(g.p.met.grpc.WithLabelValues("/grpc.testing.TestService/", "grpc", "5")); n != 1 {
		t.Errorf("grpc_calls_total{grpc_status=5} = %v, want 1", n)
	}
	g.p.alog.flush()
	if log := g.log.String(); !strings.Contains(log, `"grpc_status":"5"`) || !strings.Contains(log, `"protocol":"HTTP/2.0"`) {
		t.Errorf("access log:\n%s", log)
	}
}

func TestGRPCStreams(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 2)
	c := g.client(t)
	ctx := context.Background()

	// Server streaming: three messages, the second a large one.
	ss, err := c.StreamingOutputCall(ctx, &grpc_testing.StreamingOutputCallRequest{ResponseParameters: []*grpc_testing.ResponseParameters{{Size: 10}, {Size: 3 << 20}, {Size: 7, IntervalUs: 50000}}})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for {
		m, err := ss.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(m.GetPayload().GetBody()))
	}
	if fmt.Sprint(sizes) != fmt.Sprint([]int{10, 3 << 20, 7}) {
		t.Fatalf("server streaming: %v", sizes)
	}

	// Client streaming.
	cs, err := c.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := cs.Send(&grpc_testing.StreamingInputCallRequest{Payload: &grpc_testing.Payload{Body: make([]byte, i)}}); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := cs.CloseAndRecv()
	if err != nil || sum.GetAggregatedPayloadSize() != 4950 {
		t.Fatalf("client streaming: %v %v", sum, err)
	}

	// Bidi: each message answered before the next is sent, so the proxy
	// must pass every message on at once in both directions.
	bs, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		body := []byte(fmt.Sprint("ping ", i))
		if err := bs.Send(&grpc_testing.StreamingOutputCallRequest{Payload: &grpc_testing.Payload{Body: body}}); err != nil {
			t.Fatal(err)
		}
		m, err := bs.Recv()
		if err != nil || !bytes.Equal(m.GetPayload().GetBody(), body) {
			t.Fatalf("bidi %d: %v %v", i, m, err)
		}
	}
	bs.CloseSend()
	if _, err := bs.Recv(); err != io.EOF {
		t.Fatalf("bidi end: %v", err)
	}
}

func TestGRPCDeadline(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 1)
	c := g.client(t)
	// The instance sees the client's deadline (what is left of it).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var hdr metadata.MD
	if _, err := c.UnaryCall(ctx, &grpc_testing.SimpleRequest{}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-saw-deadline"); len(got) != 1 || got[0] != "30s" {
		t.Errorf("the instance saw deadline %v, want 30s", got)
	}
	// A call that outlives its deadline ends with DEADLINE_EXCEEDED, soon.
	ctx, cancel = context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "x-sleep", "10s"), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.UnaryCall(ctx, &grpc_testing.SimpleRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("past its deadline: %v", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Fatalf("DEADLINE_EXCEEDED after %v", d)
	}
}

func TestGRPCUnavailableOnEmptyPool(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "nothing", Proto: ProtoGRPC}, 0)
	_, err := g.client(t).UnaryCall(context.Background(), &grpc_testing.SimpleRequest{})
	st, _ := status.FromError(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), `no healthy instance of service "nothing"`) {
		t.Fatalf("empty pool: %v", err)
	}
	if n := testutil.ToFloat64(g.p.met.grpc.WithLabelValues("/grpc.testing.TestService/", "nothing", "14")); n != 1 {
		t.Errorf("grpc_calls_total{grpc_status=14} = %v", n)
	}
}

// TestGRPCToHTTPRoute: a gRPC call on a route that is not a gRPC route
// gets a gRPC error that says so, not an HTTP/1.1 exchange that fails.
func TestGRPCToHTTPRoute(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "web"}, 0)
	be := newBackend(t, "web1")
	g.register("web1", "web", be.addr, 1)
	g.synced()
	_, err := g.client(t).UnaryCall(context.Background(), &grpc_testing.SimpleRequest{})
	st, _ := status.FromError(err)
	if st.Code() != codes.Unimplemented || !strings.Contains(st.Message(), "not a gRPC route") {
		t.Fatalf("gRPC to an HTTP route: %v", err)
	}
	if be.hits.Load() != 0 {
		t.Errorf("the HTTP instance got the call")
	}
	// And over HTTP/1.1 a gRPC route answers 505.
	g2 := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 1)
	resp, err := g2.http.Post("http://"+g2.addr+"/grpc.testing.TestService/UnaryCall", "application/grpc", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 505 {
		t.Fatalf("HTTP/1.1 to a gRPC route: %d", resp.StatusCode)
	}
}

// TestGRPCDeadInstance: an instance that does not answer connections is
// passed over (nothing was sent), and taken out of rotation.
func TestGRPCDeadInstance(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 1)
	g.register("dead", "grpc", deadPort(t), 1)
	g.synced()
	c := g.client(t)
	for i := range 20 {
		if _, err := c.UnaryCall(context.Background(), &grpc_testing.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if n := g.inst[0].svc.calls.Load(); n != 20 {
		t.Errorf("the live instance got %d calls", n)
	}
}

// TestGRPCRetryUnavailable: an instance that answers UNAVAILABLE is passed
// over for a method the route names idempotent, and not for others.
func TestGRPCRetryUnavailable(t *testing.T) {
	for _, idem := range []string{"/grpc.testing.TestService/UnaryCall", ""} {
		g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC, GRPCIdempotent: idem}, 2)
		g.inst[0].svc.fail = codes.Unavailable
		c := g.client(t)
		failed := 0
		for range 20 {
			if _, err := c.UnaryCall(context.Background(), &grpc_testing.SimpleRequest{Payload: &grpc_testing.Payload{Body: []byte("x")}}); err != nil {
				if status.Code(err) != codes.Unavailable {
					t.Fatalf("%v", err)
				}
				failed++
			}
		}
		switch {
		case idem != "" && failed > 0:
			t.Errorf("grpc_idempotent %s: %d of 20 calls failed", idem, failed)
		case idem == "" && failed == 0:
			t.Errorf("without grpc_idempotent no call failed: UNAVAILABLE was retried")
		}
	}
}

// TestGRPCRollingRestart restarts each of two instances in turn, as a
// deploy does (out of the catalog, graceful stop, start, back in), under
// a steady load of calls: not one fails.
func TestGRPCRollingRestart(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 2)
	c := g.client(t)
	ctx, stop := context.WithCancel(context.Background())
	var calls, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && calls.Load() < 200000 {
				cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := c.UnaryCall(cctx, &grpc_testing.SimpleRequest{})
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
	waitCalls := func(n int64) {
		deadline := time.Now().Add(20 * time.Second)
		for target := calls.Load() + n; calls.Load() < target && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitCalls(200)
	for i, inst := range g.inst {
		name := fmt.Sprintf("g%d", i+1)
		g.deregister(name)
		g.synced()
		inst.stop()
		waitCalls(200) // the other instance carries the load alone
		n := startGRPC(t, name, inst.addr, nil)
		g.inst[i] = n
		g.register(name, "grpc", n.addr, 1)
		g.synced()
		waitCalls(200)
	}
	stop()
	wg.Wait()
	t.Logf("%d calls during the restarts, %d failed", calls.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d calls failed; first: %v", failed.Load(), calls.Load(), firstErr.Load())
	}
	for i, inst := range g.inst {
		if inst.svc.calls.Load() == 0 {
			t.Errorf("restarted instance %d got no calls", i+1)
		}
	}
}

// TestGRPCOverTLS: a gRPC client over TLS to the front door (ALPN h2), and
// the front door to TLS instances (tls: true).
func TestGRPCOverTLS(t *testing.T) {
	dir := t.TempDir()
	files, cert := writeCert(t, dir, "inst", 3, "grpc.internal")
	pair, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	e := newTLSEnv(t, nil)
	e.p.cfg.Routes = nil
	inst := startGRPC(t, "tls1", "127.0.0.1:0", credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}}))
	// A KV route, as a config route cannot be added to a running proxy.
	val := fmt.Sprintf(`{"path":"/grpc.testing.TestService/","service":"gtls","proto":"grpc","tls":true,"tls_server_name":"grpc.internal","tls_ca_file":%q}`, files.CertFile)
	e.reg.KVPut(KVRoutePrefix+"gtls", []byte(val), 0, nil)
	e.register("tls1", "gtls", inst.addr, 1)
	e.synced()
	pool := x509.NewCertPool()
	pool.AddCert(e.a)
	_ = cert
	cc, err := grpc.NewClient("passthrough:///"+e.tlsAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "a.test"})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := grpc_testing.NewTestServiceClient(cc).UnaryCall(context.Background(), &grpc_testing.SimpleRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.ServerId != "tls1" {
		t.Fatalf("answered by %q", resp.ServerId)
	}
	// A route whose TLS settings do not match the instance fails the call
	// UNAVAILABLE, without holding it against the instance.
	bad := fmt.Sprintf(`{"path":"/grpc.testing.TestService/UnaryCall","service":"gtls","proto":"grpc","tls":true,"tls_server_name":"other.internal","tls_ca_file":%q}`, files.CertFile)
	e.reg.KVPut(KVRoutePrefix+"gtls-bad", []byte(bad), 0, nil)
	e.synced()
	_, err = grpc_testing.NewTestServiceClient(cc).UnaryCall(context.Background(), &grpc_testing.SimpleRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a TLS mismatch: %v", err)
	}
	for _, m := range e.bal.Pool("gtls").Members() {
		if !m.Backend.DownUntil().IsZero() {
			t.Errorf("the instance was taken out for the route's TLS mismatch")
		}
	}
}
