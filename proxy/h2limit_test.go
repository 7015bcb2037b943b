package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestGRPCMaxBodySize: max_body_size bounds a gRPC call's whole request
// stream. A stream under it passes; one that goes past it ends
// RESOURCE_EXHAUSTED (client streaming and bidi alike), and the instance
// never receives more than the limit.
func TestGRPCMaxBodySize(t *testing.T) {
	const limit = 10000
	g := newGRPCEnvWith(t, Route{Service: "grpc", Proto: ProtoGRPC}, 1, func(c *Config) { c.MaxBodySize = limit })
	c := g.client(t)
	svc := g.inst[0].svc
	ctx := context.Background()
	msg := &grpc_testing.StreamingInputCallRequest{Payload: &grpc_testing.Payload{Body: bytes.Repeat([]byte("m"), 1000)}}

	// 8 messages of 1000 bytes (8 x 1008 on the wire) fit.
	cs, err := c.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 8 {
		if err := cs.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	if sum, err := cs.CloseAndRecv(); err != nil || sum.GetAggregatedPayloadSize() != 8000 {
		t.Fatalf("under the limit: %v %v", sum, err)
	}

	// 30 do not.
	svc.inBytes.Store(0)
	ended := svc.inEnded.Load()
	cs, err = c.StreamingInputCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 30 {
		if err := cs.Send(msg); err != nil {
			break // io.EOF: the stream was ended; CloseAndRecv tells why
		}
	}
	_, err = cs.CloseAndRecv()
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "max_body_size (10000 bytes)") {
		t.Fatalf("over the limit, client streaming: %v", err)
	}
	eventually.True(t, 10*time.Second, "the instance's call ended", func() bool { return svc.inEnded.Load() > ended })
	if n := svc.inBytes.Load(); n > limit {
		t.Errorf("the instance received %d payload bytes, over max_body_size %d", n, limit)
	}

	// Bidi: each message answered before the next; past the limit the
	// stream ends RESOURCE_EXHAUSTED, after the answers already sent.
	svc.inBytes.Store(0)
	ended = svc.inEnded.Load()
	bs, err := c.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	answered := 0
	for range 30 {
		if err := bs.Send(&grpc_testing.StreamingOutputCallRequest{Payload: msg.Payload}); err != nil {
			_, err = bs.Recv()
			break
		}
		if _, err = bs.Recv(); err != nil {
			break
		}
		answered++
	}
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted {
		t.Fatalf("over the limit, bidi: %v after %d answers", err, answered)
	}
	if answered < 5 || answered > 9 {
		t.Errorf("bidi: %d messages answered before the limit, want 9 (or a few fewer: the stream is cut by bytes)", answered)
	}
	eventually.True(t, 10*time.Second, "the instance's call ended", func() bool { return svc.inEnded.Load() > ended })
	if n := svc.inBytes.Load(); n > limit {
		t.Errorf("the instance received %d payload bytes, over max_body_size %d", n, limit)
	}
	if n := svc.inBytes.Load(); n != int64(answered)*1000 {
		t.Errorf("the instance received %d payload bytes, answered %d messages", n, answered)
	}
	g.p.alog.flush()
	if log := g.log.String(); !strings.Contains(log, `"grpc_status":"8"`) {
		t.Errorf("access log has no grpc_status 8:\n%s", log)
	}
}

// countingBackend is an HTTP/1.1 instance that reads each request body to
// its end (or its error) and records the most bytes it got of one.
type countingBackend struct {
	hits, done, most atomic.Int64
}

func (b *countingBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	n, _ := io.Copy(io.Discard, r.Body)
	for m := b.most.Load(); n > m && !b.most.CompareAndSwap(m, n); m = b.most.Load() {
	}
	b.done.Add(1)
	w.Write([]byte("ok"))
}

// TestH2MaxBodySize: an HTTP/2 request body past max_body_size is 413,
// with a content-length (refused before any of it is sent) or without
// (cut at the limit); the instance gets no more than the limit.
func TestH2MaxBodySize(t *testing.T) {
	const limit = 1000
	e := newEnv(t, func(c *Config) {
		c.H2C = true
		c.MaxBodySize = limit
		c.Routes = []Route{{Path: "/", Service: "app"}}
	})
	be := &countingBackend{}
	ln := listen(t)
	srv := &http.Server{Handler: be}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e.register("app-1", "app", ln.Addr().String(), 1)
	e.synced()
	c := h2cClient(t, e.addr)
	post := func(body io.Reader) (int, error) {
		req, _ := http.NewRequest("POST", "http://x/up", body)
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			return 0, errors.New("not HTTP/2: " + resp.Proto)
		}
		return resp.StatusCode, nil
	}
	if code, err := post(strings.NewReader(strings.Repeat("a", limit))); err != nil || code != 200 {
		t.Fatalf("at the limit: %d %v", code, err)
	}
	hits := be.hits.Load()
	if code, err := post(strings.NewReader(strings.Repeat("a", limit+1))); err != nil || code != 413 {
		t.Errorf("content-length over the limit: %d %v", code, err)
	}
	if be.hits.Load() != hits {
		t.Errorf("a content-length over the limit reached the instance")
	}
	// No content-length: a reader of unknown length, streamed.
	be.most.Store(0)
	code, err := post(struct{ io.Reader }{strings.NewReader(strings.Repeat("b", 50*limit))})
	if err != nil || code != 413 {
		t.Errorf("streamed body over the limit: %d %v", code, err)
	}
	eventually.True(t, 10*time.Second, "the instance is done with what it got", func() bool { return be.done.Load() == be.hits.Load() })
	if n := be.most.Load(); n > limit {
		t.Errorf("the instance read %d bytes of a body, over max_body_size %d", n, limit)
	}
}
