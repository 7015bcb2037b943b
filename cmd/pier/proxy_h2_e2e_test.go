package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestProxyH2CAndGRPC runs the built binary as a front door with h2c on
// and a gRPC route from a tag: curl with prior knowledge gets HTTP/2, and
// a gRPC client reaches a real gRPC server (its health service) through it.
func TestProxyH2CAndGRPC(t *testing.T) {
	requireCurl(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	defer srv.Stop()
	port := ln.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte("proxy:\n  addr: 127.0.0.1:0\n  h2c: true\n"), 0o600)
	a := startAgent(t, "-dev", "-node", "front", "-config-file", cfg)
	proxy := a.proxyAddr()

	code, body := curl(t, "-X", "PUT", "-d", fmt.Sprintf(`{"ID":"hc-1","Name":"hc","Address":"127.0.0.1","Port":%d,"Tags":["urlprefix-/grpc.health.v1.Health/ proto=grpc"]}`, port),
		"http://"+a.addr+"/v1/agent/service/register")
	if code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	cc, err := grpc.NewClient("passthrough:///"+proxy, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("gRPC through the front door: %v %v\n%s", resp, err, a.logs())
	}
	out, err := exec.Command("curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "http://"+proxy+"/nothing").Output()
	if err != nil || string(out) != "2 404" {
		t.Errorf("curl --http2-prior-knowledge: %q %v", out, err)
	}
}
