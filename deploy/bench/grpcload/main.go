// Command grpcload is the HTTP/2 and gRPC load generator of
// deploy/bench/h2grpc.sh, and the gRPC instance it loads: a closed loop
// (as many calls as the workers can make) or a fixed rate (calls start on
// a schedule, and a call's latency counts from its scheduled start, so a
// stalled proxy is not hidden by calls that were never sent). It prints
// one JSON line: calls, errors, calls/s, p50 and p99 in microseconds.
//
//	grpcload -serve 127.0.0.1:9001 -name g1                  # a gRPC TestService instance
//	grpcload -target 127.0.0.1:8080 -kind grpc -duration 10s  # unary calls, closed loop
//	grpcload -target 127.0.0.1:8443 -kind h2tls -path /api/hello -rate 5000
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop/grpc_testing"
)

type result struct {
	Kind   string  `json:"kind"`
	Calls  int     `json:"calls"`
	Errors int64   `json:"errors"`
	Rate   float64 `json:"calls_per_s"`
	P50    int64   `json:"p50_us"`
	P99    int64   `json:"p99_us"`
}

type server struct {
	grpc_testing.UnimplementedTestServiceServer
	name string
}

func (s *server) UnaryCall(_ context.Context, req *grpc_testing.SimpleRequest) (*grpc_testing.SimpleResponse, error) {
	return &grpc_testing.SimpleResponse{ServerId: s.name, Payload: req.GetPayload()}, nil
}

func main() {
	serve := flag.String("serve", "", "serve a gRPC TestService instance on this address")
	name := flag.String("name", "g", "the instance's name, in its answers")
	target := flag.String("target", "", "host:port to load")
	kind := flag.String("kind", "grpc", "grpc (h2c), grpctls, h2c or h2tls")
	path := flag.String("path", "/", "request path for h2c and h2tls")
	conns := flag.Int("conns", 4, "client connections")
	workers := flag.Int("concurrency", 64, "calls in flight at most")
	duration := flag.Duration("duration", 10*time.Second, "how long to load")
	rate := flag.Float64("rate", 0, "calls per second in all (0: as many as the workers can make)")
	flag.Parse()
	if *serve != "" {
		ln, err := net.Listen("tcp", *serve)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		s := grpc.NewServer()
		grpc_testing.RegisterTestServiceServer(s, &server{name: *name})
		fmt.Fprintln(os.Stderr, s.Serve(ln))
		os.Exit(1)
	}
	call, closeAll, err := caller(*kind, *target, *path, *conns)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer closeAll()
	res := load(call, *workers, *duration, *rate)
	res.Kind = *kind
	json.NewEncoder(os.Stdout).Encode(res)
}

// caller returns a function making one call on connection i%conns.
func caller(kind, target, path string, conns int) (func(i int) error, func(), error) {
	tlsConf := &tls.Config{InsecureSkipVerify: true} // the bench's own self-signed certificate
	switch kind {
	case "grpc", "grpctls":
		var clients []grpc_testing.TestServiceClient
		var ccs []*grpc.ClientConn
		creds := insecure.NewCredentials()
		if kind == "grpctls" {
			creds = credentials.NewTLS(tlsConf)
		}
		for range conns {
			cc, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(creds))
			if err != nil {
				return nil, nil, err
			}
			ccs = append(ccs, cc)
			clients = append(clients, grpc_testing.NewTestServiceClient(cc))
		}
		req := &grpc_testing.SimpleRequest{Payload: &grpc_testing.Payload{Body: []byte("hello")}}
		return func(i int) error {
				_, err := clients[i%len(clients)].UnaryCall(context.Background(), req)
				return err
			}, func() {
				for _, cc := range ccs {
					cc.Close()
				}
			}, nil
	case "h2c", "h2tls":
		var hcs []*http.Client
		var trs []*http.Transport
		scheme := "http://"
		for range conns {
			var protos http.Protocols
			tr := &http.Transport{Protocols: &protos, TLSClientConfig: tlsConf}
			if kind == "h2c" {
				protos.SetUnencryptedHTTP2(true)
			} else {
				protos.SetHTTP2(true)
				scheme = "https://"
			}
			trs = append(trs, tr)
			hcs = append(hcs, &http.Client{Transport: tr, Timeout: 30 * time.Second})
		}
		url := scheme + target + path
		return func(i int) error {
				resp, err := hcs[i%len(hcs)].Get(url)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
					return fmt.Errorf("%s %d", resp.Proto, resp.StatusCode)
				}
				return nil
			}, func() {
				for _, tr := range trs {
					tr.CloseIdleConnections()
				}
			}, nil
	}
	return nil, nil, fmt.Errorf("-kind %q: want grpc, grpctls, h2c or h2tls", kind)
}

// load runs call from workers goroutines for d, closed loop or at rate.
func load(call func(int) error, workers int, d time.Duration, rate float64) result {
	var errs atomic.Int64
	lat := make([][]int64, workers)
	start := time.Now()
	end := start.Add(d)
	var sched chan time.Time
	if rate > 0 {
		sched = make(chan time.Time, workers)
		go func() {
			defer close(sched)
			interval := time.Duration(float64(time.Second) / rate)
			for next := start; next.Before(end); next = next.Add(interval) {
				if w := time.Until(next); w > 0 {
					time.Sleep(w)
				}
				sched <- next
			}
		}()
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i += workers {
				var t0 time.Time
				if sched != nil {
					var ok bool
					if t0, ok = <-sched; !ok {
						return
					}
				} else if t0 = time.Now(); t0.After(end) {
					return
				}
				if err := call(i); err != nil {
					if errs.Add(1) == 1 {
						fmt.Fprintln(os.Stderr, "first error:", err)
					}
					continue
				}
				lat[w] = append(lat[w], time.Since(t0).Microseconds())
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	return result{Calls: len(all), Errors: errs.Load(), Rate: float64(len(all)) / elapsed.Seconds(), P50: percentile(all, 50), P99: percentile(all, 99)}
}

// percentile of sorted values, nearest rank.
func percentile(sorted []int64, p int) int64 {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}
