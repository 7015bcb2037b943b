package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry"
)

func resolveFile(t *testing.T, body string) (agentConfig, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pier.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newAgentFlags()
	if err := f.fs.Parse([]string{"-dev", "-config-file", p}); err != nil {
		t.Fatal(err)
	}
	return f.resolve()
}

// TestConfigServiceFields: multi-port services, socket_path and locality
// in a config file, as Consul's agent config writes them.
func TestConfigServiceFields(t *testing.T) {
	c, err := resolveFile(t, `
locality: {region: us-east-1, zone: us-east-1a}
services:
  - name: app
    ports:
      - {name: http, port: 8080, default: true}
      - {name: admin, port: 9090}
    locality: {region: us-east-1, zone: us-east-1b}
  - name: sock
    socket_path: /run/sock.sock
proxy:
  routes:
    - {path: /admin/, service: app, port: admin}
`)
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	if c.Locality == nil || *c.Locality != (registry.Locality{Region: "us-east-1", Zone: "us-east-1a"}) {
		t.Errorf("agent locality %+v", c.Locality)
	}
	if len(c.Services) != 2 {
		t.Fatalf("%d services", len(c.Services))
	}
	app, sock := c.Services[0].Service, c.Services[1].Service
	wantPorts := []registry.ServicePort{{Name: "http", Port: 8080, Default: true}, {Name: "admin", Port: 9090}}
	if !slices.Equal(app.Ports, wantPorts) || app.Port != 8080 || app.Locality == nil || app.Locality.Zone != "us-east-1b" {
		t.Errorf("app: %+v", app)
	}
	if sock.SocketPath != "/run/sock.sock" {
		t.Errorf("sock: %+v", sock)
	}
	if c.Proxy == nil || len(c.Proxy.proxy.Routes) != 1 || c.Proxy.proxy.Routes[0].Port != "admin" {
		t.Errorf("proxy routes: %+v", c.Proxy)
	}

	for _, tc := range []struct{ body, want string }{
		{"services:\n  - {name: s, socket_path: /run/s.sock, port: 80}\n", "socket_path"},
		{"services:\n  - {name: s, ports: [{name: a, port: 1}]}\n", "Ports"},
		{"services:\n  - {name: s, port: 80, connect: {sidecar_service: {}}}\n", "Connect.SidecarService"},
		{"locality: {zone: a}\n", "locality.Zone"},
	} {
		if _, err := resolveFile(t, tc.body); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error naming %s", tc.body, err, tc.want)
		}
	}
}

// TestConfigFieldsE2E: the built agent with a config file's locality and a
// multi-port service answers them to the consul/api client.
func TestConfigFieldsE2E(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pier.yaml")
	if err := os.WriteFile(file, []byte(`
locality: {region: eu-west-1, zone: eu-west-1a}
services:
  - name: app
    ports: [{name: http, port: 8080, default: true}, {name: admin, port: 9090}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "-dev", "-node", "lnode", "-data-dir", t.TempDir(), "-config-file", file)
	c, err := consul.NewClient(&consul.Config{Address: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	n, _, err := c.Catalog().Node("lnode", nil)
	if err != nil || n == nil || n.Node == nil {
		t.Fatalf("Catalog().Node: %+v, %v", n, err)
	}
	if l := n.Node.Locality; l == nil || l.Region != "eu-west-1" || l.Zone != "eu-west-1a" {
		t.Errorf("node Locality %+v", l)
	}
	s, _, err := c.Agent().Service("app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := s.Ports; len(p) != 2 || p[1].Name != "admin" || p[1].Port != 9090 || s.Port != 8080 {
		t.Errorf("app: Ports %+v Port %d", s.Ports, s.Port)
	}
}
