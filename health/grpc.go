package health

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pier-dev/pier/registry"
)

// probeGRPC asks the standard grpc.health.v1 Health service. The target is
// "host:port" or "host:port/service", as in Consul; SERVING is passing and
// anything else critical.
func probeGRPC(ctx context.Context, d *registry.CheckDefinition) (registry.Status, string) {
	target, service, _ := strings.Cut(d.GRPC, "/")
	creds := insecure.NewCredentials()
	if d.GRPCUseTLS {
		creds = credentials.NewTLS(tlsConfig(*d))
	}
	// passthrough: dial the address as given, without a resolver goroutine.
	conn, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return registry.StatusCritical, fmt.Sprintf("gRPC check %s: %v", d.GRPC, err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return registry.StatusCritical, fmt.Sprintf("gRPC check %s: %v", d.GRPC, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return registry.StatusCritical, fmt.Sprintf("gRPC %s serving status: %s", d.GRPC, resp.GetStatus())
	}
	return registry.StatusPassing, fmt.Sprintf("gRPC check %s: success", d.GRPC)
}
