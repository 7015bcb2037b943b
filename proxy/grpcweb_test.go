package proxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
)

// TestGRPCWeb drives connect-go's gRPC-Web client, over HTTP/1.1 and over
// h2c, through a gRPC route to a grpc-go server: unary calls with their
// headers and trailers, an error status, and server streaming.
func TestGRPCWeb(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 1)
	h1 := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	t.Cleanup(h1.CloseIdleConnections)
	for name, hc := range map[string]*http.Client{"HTTP/1.1": h1, "h2c": h2cClient(t, g.addr)} {
		t.Run(name, func(t *testing.T) {
			base := "http://" + g.addr + "/grpc.testing.TestService/"
			unary := connect.NewClient[grpc_testing.SimpleRequest, grpc_testing.SimpleResponse](hc, base+"UnaryCall", connect.WithGRPCWeb())
			ctx := context.Background()
			resp, err := unary.CallUnary(ctx, connect.NewRequest(&grpc_testing.SimpleRequest{Payload: &grpc_testing.Payload{Body: []byte("web")}}))
			if err != nil {
				t.Fatal(err)
			}
			if resp.Msg.GetServerId() != "g1" || string(resp.Msg.GetPayload().GetBody()) != "web" {
				t.Errorf("answer: %v", resp.Msg)
			}
			if resp.Header().Get("X-Instance") != "g1" || resp.Trailer().Get("X-Trailer") != "t-g1" {
				t.Errorf("headers %v, trailers %v", resp.Header(), resp.Trailer())
			}
			if ct := resp.Header().Get("Content-Type"); ct != "application/grpc-web+proto" {
				t.Errorf("content type %q", ct)
			}
			_, err = unary.CallUnary(ctx, connect.NewRequest(&grpc_testing.SimpleRequest{ResponseStatus: &grpc_testing.EchoStatus{Code: int32(connect.CodeNotFound), Message: "no such thing"}}))
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeNotFound || ce.Message() != "no such thing" {
				t.Errorf("error status: %v", err)
			}

			stream := connect.NewClient[grpc_testing.StreamingOutputCallRequest, grpc_testing.StreamingOutputCallResponse](hc, base+"StreamingOutputCall", connect.WithGRPCWeb())
			ss, err := stream.CallServerStream(ctx, connect.NewRequest(&grpc_testing.StreamingOutputCallRequest{
				ResponseParameters: []*grpc_testing.ResponseParameters{{Size: 10}, {Size: 1 << 20}, {Size: 7, IntervalUs: 20000}}}))
			if err != nil {
				t.Fatal(err)
			}
			var sizes []int
			for ss.Receive() {
				sizes = append(sizes, len(ss.Msg().GetPayload().GetBody()))
			}
			if err := ss.Err(); err != nil || fmt.Sprint(sizes) != fmt.Sprint([]int{10, 1 << 20, 7}) {
				t.Errorf("server streaming: %v %v", sizes, err)
			}
			ss.Close()
		})
	}
}

// TestGRPCWebText: the base64 form, by hand, over HTTP/1.1: the request
// decoded (sent in two padded pieces), the answer encoded, the trailers in
// a 0x80 frame.
func TestGRPCWebText(t *testing.T) {
	g := newGRPCEnv(t, Route{Service: "grpc", Proto: ProtoGRPC}, 1)
	msg, _ := proto.Marshal(&grpc_testing.SimpleRequest{Payload: &grpc_testing.Payload{Body: []byte("text")}})
	fr := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	fr = append(fr, msg...)
	body := base64.StdEncoding.EncodeToString(fr[:4]) + base64.StdEncoding.EncodeToString(fr[4:])
	req, _ := http.NewRequest("POST", "http://"+g.addr+"/grpc.testing.TestService/UnaryCall", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/grpc-web-text")
	req.Header.Set("X-Grpc-Web", "1")
	resp, err := g.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/grpc-web-text" {
		t.Fatalf("%d %v %q", resp.StatusCode, resp.Header, raw)
	}
	dec, err := base64.StdEncoding.DecodeString(string(raw))
	if err != nil {
		t.Fatalf("answer not base64: %v: %q", err, raw)
	}
	var out grpc_testing.SimpleResponse
	var trailer string
	for len(dec) >= 5 {
		n := binary.BigEndian.Uint32(dec[1:5])
		payload := dec[5 : 5+n]
		if dec[0] == 0x80 {
			trailer = string(payload)
		} else if err := proto.Unmarshal(payload, &out); err != nil {
			t.Fatal(err)
		}
		dec = dec[5+n:]
	}
	if string(out.GetPayload().GetBody()) != "text" || !strings.Contains(trailer, "grpc-status: 0\r\n") || !strings.Contains(trailer, "x-trailer: t-g1\r\n") {
		t.Errorf("answer %v, trailer frame %q", &out, trailer)
	}
}

// TestGRPCWebPreflight: a CORS preflight to a gRPC route over HTTP/1.1 is
// not answered by pier: it reaches the instance (here an h2c server that
// answers CORS) and its answer comes back. Other HTTP/1.1 requests to a
// gRPC route stay 505.
func TestGRPCWebPreflight(t *testing.T) {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	ln := listen(t)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
		w.Header().Set("Access-Control-Allow-Headers", "content-type,x-grpc-web")
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/svc.S/", Service: "cors", Proto: ProtoGRPC}} })
	e.register("cors-1", "cors", ln.Addr().String(), 1)
	e.synced()
	code, _, hdr := e.do("OPTIONS", "", "/svc.S/M", nil, "Origin", "https://app.example", "Access-Control-Request-Method", "POST")
	if code != 204 || hdr.Get("Access-Control-Allow-Origin") != "https://app.example" {
		t.Errorf("preflight: %d %v", code, hdr)
	}
	if code, _, _ := e.do("POST", "", "/svc.S/M", bytes.NewReader(nil), "Content-Type", "application/json"); code != 505 {
		t.Errorf("plain HTTP/1.1 POST to a gRPC route: %d, want 505", code)
	}
}

// FuzzGRPCWebText: the -text body decoder never panics, and decodes what
// is base64 in groups of four (padded pieces included) as the standard
// decoder does group by group.
func FuzzGRPCWebText(f *testing.F) {
	f.Add([]byte("AAAAAAU=CgN0ZXh0"))
	f.Add([]byte("AA==\r\nAAAA"))
	f.Add([]byte("!!!!"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := io.ReadAll(&base64Reader{r: bytes.NewReader(in)})
		clean := bytes.ReplaceAll(bytes.ReplaceAll(in, []byte("\r"), nil), []byte("\n"), nil)
		var want []byte
		ok := len(clean)%4 == 0
		for i := 0; ok && i < len(clean); i += 4 {
			d, derr := base64.StdEncoding.DecodeString(string(clean[i : i+4]))
			ok = derr == nil
			want = append(want, d...)
		}
		if ok && (err != nil || !bytes.Equal(got, want)) {
			t.Fatalf("%q: got %q, %v; want %q", in, got, err, want)
		}
		if !ok && err == nil {
			t.Fatalf("%q: accepted as %q", in, got)
		}
	})
}
