package api_test

// Fields of Consul's service model that pier used to accept and drop:
// Locality, SocketPath, multi-port services (Ports), and Connect blocks,
// which pier refuses instead of ignoring.

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry"
)

func TestLocality(t *testing.T) {
	agentLoc := &registry.Locality{Region: "us-east-1", Zone: "us-east-1a"}
	a := startAgentWith(t, func(c *registry.Config) { c.Locality = agentLoc })
	own := &consul.Locality{Region: "eu-west-1", Zone: "eu-west-1b"}
	mustRegister(t, a, &consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 8080, Locality: own})
	mustRegister(t, a, &consul.AgentServiceRegistration{ID: "web2", Name: "web", Port: 8081})
	wantAgent := &consul.Locality{Region: agentLoc.Region, Zone: agentLoc.Zone}

	eq := func(a, b *consul.Locality) bool { return a == nil && b == nil || a != nil && b != nil && *a == *b }
	// A service without a locality of its own shows none, as in Consul:
	// the agent's is the node's (Node.Locality), not copied into services.
	want := map[string]*consul.Locality{"web1": own, "web2": nil}

	for id, w := range want {
		s, _, err := a.client.Agent().Service(id, nil)
		if err != nil {
			t.Fatalf("Agent().Service(%s): %v", id, err)
		}
		if !eq(s.Locality, w) {
			t.Errorf("/v1/agent/service/%s: Locality %+v, want %+v", id, s.Locality, w)
		}
		_, info, err := a.client.Agent().AgentHealthServiceByID(id)
		if err != nil {
			t.Fatalf("AgentHealthServiceByID(%s): %v", id, err)
		}
		if info == nil || info.Service == nil || !eq(info.Service.Locality, w) {
			t.Errorf("/v1/agent/health/service/id/%s: %+v, want Locality %+v", id, info, w)
		}
	}
	svcs, err := a.client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	for id, w := range want {
		if s := svcs[id]; s == nil || !eq(s.Locality, w) {
			t.Errorf("/v1/agent/services[%s]: %+v, want Locality %+v", id, s, w)
		}
	}
	cs, _, err := a.client.Catalog().Service("web", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 {
		t.Fatalf("catalog: %d instances of web, want 2", len(cs))
	}
	for _, c := range cs {
		if !eq(c.ServiceLocality, want[c.ServiceID]) {
			t.Errorf("/v1/catalog/service/web %s: ServiceLocality %+v, want %+v", c.ServiceID, c.ServiceLocality, want[c.ServiceID])
		}
	}
	hs, _, err := a.client.Health().Service("web", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if !eq(h.Service.Locality, want[h.Service.ID]) || !eq(h.Node.Locality, wantAgent) {
			t.Errorf("/v1/health/service/web %s: Service.Locality %+v, Node.Locality %+v; want %+v and %+v",
				h.Service.ID, h.Service.Locality, h.Node.Locality, want[h.Service.ID], wantAgent)
		}
	}
	nodes, _, err := a.client.Catalog().Nodes(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || !eq(nodes[0].Locality, wantAgent) {
		t.Errorf("/v1/catalog/nodes: %+v, want Locality %+v", nodes, wantAgent)
	}

	// A zone without a region is refused, as Consul does, naming the field.
	err = a.client.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "web3", Name: "web", Port: 8082, Locality: &consul.Locality{Zone: "z"}})
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "Locality.Zone") {
		t.Errorf("zone without region: %v, want a 400 naming Locality.Zone", err)
	}
	if _, _, err := a.client.Agent().Service("web3", nil); err == nil {
		t.Error("web3 was registered despite its bad locality")
	}
}

func TestAgentLocalityRefused(t *testing.T) {
	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address = "node1", "127.0.0.1"
	rcfg.Locality = &registry.Locality{Zone: "a"}
	if _, err := registry.New(rcfg); err == nil || !strings.Contains(err.Error(), "locality.Zone") {
		t.Errorf("registry.New with a zone and no region: %v, want an error naming locality.Zone", err)
	}
}

func TestMultiPortAndSocketPath(t *testing.T) {
	a := startAgent(t)
	ports := consul.ServicePorts{{Name: "http", Port: 8080, Default: true}, {Name: "admin", Port: 9090}}
	mustRegister(t, a, &consul.AgentServiceRegistration{ID: "app1", Name: "app", Address: "10.0.0.5", Ports: ports})
	mustRegister(t, a, &consul.AgentServiceRegistration{ID: "sock1", Name: "sock", SocketPath: "/run/sock1.sock"})

	s, _, err := a.client.Agent().Service("app1", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Port is the default port, as Consul fills it in for older clients.
	if !slices.Equal(s.Ports, ports) || s.Port != 8080 || s.DefaultPort() != 8080 {
		t.Errorf("/v1/agent/service/app1: Ports %+v Port %d, want %+v and 8080", s.Ports, s.Port, ports)
	}
	s, _, err = a.client.Agent().Service("sock1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.SocketPath != "/run/sock1.sock" || s.Port != 0 {
		t.Errorf("/v1/agent/service/sock1: SocketPath %q Port %d, want /run/sock1.sock and 0", s.SocketPath, s.Port)
	}
	svcs, err := a.client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(svcs["app1"].Ports, ports) || svcs["sock1"].SocketPath != "/run/sock1.sock" {
		t.Errorf("/v1/agent/services: app1 %+v, sock1 %+v", svcs["app1"], svcs["sock1"])
	}
	hs, _, err := a.client.Health().Service("app", "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(hs) != 1 || !slices.Equal(hs[0].Service.Ports, ports) || hs[0].Service.Port != 8080 {
		t.Errorf("/v1/health/service/app: %+v", hs)
	}
	// consul/api's CatalogService has no ServicePorts or ServiceSocketPath,
	// though Consul's answer carries them: read the JSON.
	for _, tc := range []struct {
		name, field, want string
	}{
		{"app", "ServicePorts", `[{"Name":"http","Port":8080,"Default":true},{"Name":"admin","Port":9090,"Default":false}]`},
		{"app", "ServicePort", `8080`},
		{"sock", "ServiceSocketPath", `"/run/sock1.sock"`},
	} {
		code, body := do(t, a, http.MethodGet, "/v1/catalog/service/"+tc.name, "")
		var got []map[string]json.RawMessage
		if code != 200 || json.Unmarshal([]byte(body), &got) != nil || len(got) != 1 {
			t.Fatalf("/v1/catalog/service/%s: %d %s", tc.name, code, body)
		}
		if string(got[0][tc.field]) != tc.want {
			t.Errorf("/v1/catalog/service/%s: %s %s, want %s", tc.name, tc.field, got[0][tc.field], tc.want)
		}
	}

	// Consul's rules for Ports, each refused with the field named, and
	// nothing stored changes.
	for _, tc := range []struct{ body, field string }{
		{`{"Name":"bad","Port":80,"Ports":[{"Name":"http","Port":8080,"Default":true}]}`, "Ports"},
		{`{"Name":"bad","Ports":[{"Name":"http","Port":8080,"Default":true},{"Name":"http","Port":8081}]}`, "Ports[1].Name"},
		{`{"Name":"bad","Ports":[{"Name":"http","Port":0,"Default":true}]}`, "Ports[0].Port"},
		{`{"Name":"bad","Ports":[{"Name":"http","Port":70000,"Default":true}]}`, "Ports[0].Port"},
		{`{"Name":"bad","Ports":[{"Name":"a","Port":1,"Default":true},{"Name":"b","Port":2,"Default":true}]}`, "Ports[1].Default"},
		{`{"Name":"bad","Ports":[{"Name":"a","Port":1},{"Name":"b","Port":2}]}`, "Ports"},
		{`{"Name":"bad","Ports":[{"Name":" ","Port":1,"Default":true}]}`, "Ports[0].Name"},
		{`{"ID":"app1","Name":"app","Ports":[{"Name":"http","Port":8080}]}`, "Ports"},
	} {
		code, body := do(t, a, http.MethodPut, "/v1/agent/service/register", tc.body)
		if code != http.StatusBadRequest || !strings.Contains(body, tc.field+":") {
			t.Errorf("register %s: %d %q, want 400 naming %s", tc.body, code, body, tc.field)
		}
	}
	if _, _, err := a.client.Agent().Service("bad", nil); err == nil {
		t.Error("an invalid registration was stored")
	}
	if s, _, err := a.client.Agent().Service("app1", nil); err != nil || !slices.Equal(s.Ports, ports) {
		t.Errorf("app1 after refused re-registrations: %+v, %v", s, err)
	}
}

func TestConnectRefused(t *testing.T) {
	a := startAgent(t)
	for _, tc := range []struct {
		field string
		reg   *consul.AgentServiceRegistration
	}{
		{"Connect.SidecarService", &consul.AgentServiceRegistration{Name: "web", Port: 80,
			Connect: &consul.AgentServiceConnect{SidecarService: &consul.AgentServiceRegistration{}}}},
		{"Connect.Native", &consul.AgentServiceRegistration{Name: "web", Port: 80,
			Connect: &consul.AgentServiceConnect{Native: true}}},
		{"Proxy", &consul.AgentServiceRegistration{Name: "web", Port: 80,
			Proxy: &consul.AgentServiceConnectProxyConfig{DestinationServiceName: "db"}}},
	} {
		err := a.client.Agent().ServiceRegister(tc.reg)
		if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("registration with %s: %v, want a 400 naming %s", tc.field, err, tc.field)
		}
	}
	svcs, err := a.client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := svcs["web"]; ok || len(svcs) != 1 {
		t.Errorf("after refused Connect registrations the agent has %v", dump(svcs))
	}
	// An empty Connect block asks for nothing and is accepted.
	mustRegister(t, a, &consul.AgentServiceRegistration{Name: "plain", Port: 80, Connect: &consul.AgentServiceConnect{}})
}

func TestDockerCheckNeedsArgs(t *testing.T) {
	a := startAgent(t)
	err := a.client.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "app", Port: 80,
		Check: &consul.AgentServiceCheck{DockerContainerID: "c1", Interval: "10s"}})
	if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "Check.Args:") {
		t.Errorf("docker check without Args: %v, want a 400 naming Check.Args", err)
	}
}
