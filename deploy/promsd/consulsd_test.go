package promsd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/consul"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

// TestConsulSD runs Prometheus's Consul discovery against a pier agent's
// HTTP API: a service registered in pier becomes a target with the labels
// consul_sd_configs gives, and goes away when it is deregistered.
func TestConsulSD(t *testing.T) {
	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address = "promnode", "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	acfg := api.DefaultConfig()
	acfg.Registry = reg
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	defer func() { cancel(); <-done }()

	sd := consul.DefaultSDConfig
	sd.Server = ln.Addr().String()
	sd.RefreshInterval = model.Duration(100 * time.Millisecond) // pier's blocking queries do the waiting
	pr := prometheus.NewRegistry()
	refresh := discovery.NewRefreshMetrics(pr)
	d, err := consul.NewDiscovery(&sd, slog.New(slog.NewTextHandler(io.Discard, nil)), sd.NewDiscovererMetrics(pr, refresh))
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan []*targetgroup.Group, 16)
	dctx, dcancel := context.WithCancel(ctx)
	ddone := make(chan struct{})
	go func() { d.Run(dctx, ch); close(ddone) }()
	defer func() { dcancel(); <-ddone }()

	groups := map[string]*targetgroup.Group{}
	await := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for !cond() {
			select {
			case gs := <-ch:
				for _, g := range gs {
					groups[g.Source] = g
				}
			case <-deadline:
				t.Fatalf("%s: not within 30s; groups: %v", what, groups)
			}
		}
	}
	web := func() *targetgroup.Group { return groups["web"] }

	err = reg.RegisterService(registry.Service{ID: "web-1", Name: "web", Tags: []string{"v1", "prom"},
		Meta: map[string]string{"version": "2"}, Address: "127.0.0.1", Port: 9100,
		Weights: registry.Weights{Passing: 1, Warning: 1}}, nil, registry.SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	await("web discovered", func() bool { return web() != nil && len(web().Targets) == 1 })
	g := web()
	labels := map[string]string{}
	for k, v := range g.Labels {
		labels[string(k)] = string(v)
	}
	for k, v := range g.Targets[0] {
		labels[string(k)] = string(v)
	}
	for k, want := range map[string]string{
		"__address__":                            "127.0.0.1:9100",
		"__meta_consul_service":                  "web",
		"__meta_consul_service_id":               "web-1",
		"__meta_consul_tags":                     ",v1,prom,",
		"__meta_consul_service_metadata_version": "2",
		"__meta_consul_service_address":          "127.0.0.1",
		"__meta_consul_service_port":             strconv.Itoa(9100),
		"__meta_consul_node":                     "promnode",
		"__meta_consul_address":                  "127.0.0.1",
		"__meta_consul_dc":                       "dc1",
		"__meta_consul_health":                   "passing",
	} {
		if got := labels[k]; got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if t.Failed() {
		t.Logf("labels: %v", labels)
	}

	if err := reg.DeregisterService("web-1"); err != nil {
		t.Fatal(err)
	}
	await("web gone", func() bool { return web() != nil && len(web().Targets) == 0 })
}
