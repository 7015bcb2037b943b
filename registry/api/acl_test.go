package api_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

const (
	mgmtTok = "11111111-mgmt"
	webTok  = "22222222-web"
	roTok   = "33333333-read"
	anonTok = "44444444-anon"
	nodeTok = "55555555-node"
)

// testACL: deny by default; anonymous requests get read on services.
func testACL() api.ACLConfig {
	return api.ACLConfig{
		Enabled:           true,
		DefaultPolicy:     "deny",
		InitialManagement: mgmtTok,
		Default:           anonTok,
		Tokens: []api.ACLToken{
			{Secret: webTok, Description: "web deployer", Rules: api.ACLRules{
				ServicePrefix: map[string]string{"web": "write", "": "read", "web-secret": "deny"},
				KeyPrefix:     map[string]string{"app/": "write"},
			}},
			{Secret: roTok, Description: "read only", Rules: api.ACLRules{
				ServicePrefix: map[string]string{"": "read"},
				KeyPrefix:     map[string]string{"": "read"},
				NodePrefix:    map[string]string{"": "read"},
				AgentPrefix:   map[string]string{"": "read"},
				Operator:      "read",
			}},
			{Secret: anonTok, Description: "anonymous", Rules: api.ACLRules{
				ServicePrefix: map[string]string{"": "read"},
			}},
			{Secret: nodeTok, Description: "nodes, and services but web-secret", Rules: api.ACLRules{
				NodePrefix:    map[string]string{"": "read"},
				ServicePrefix: map[string]string{"": "read", "web-secret": "deny"},
			}},
		},
	}
}

type aclAgent struct {
	base string
	logs *syncBuffer
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

func startACLAgent(t *testing.T, acl api.ACLConfig) *aclAgent {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = "node1"
	rcfg.Address = "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	acfg := api.DefaultConfig()
	acfg.Registry = reg
	acfg.ACL = acl
	acfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Handle("GET /ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ui") }))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &aclAgent{base: "http://" + ln.Addr().String(), logs: logs}
}

func (a *aclAgent) client(t *testing.T, token string) *consul.Client {
	t.Helper()
	cfg := consul.DefaultConfig()
	cfg.Address = strings.TrimPrefix(a.base, "http://")
	cfg.Token = token
	c, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func isDenied(err error) bool {
	return err != nil && strings.Contains(err.Error(), "403") && strings.Contains(err.Error(), "Permission denied")
}

func TestACLRegisterByPrefix(t *testing.T) {
	a := startACLAgent(t, testACL())
	mgmt := a.client(t, mgmtTok).Agent()
	web := a.client(t, webTok).Agent()
	ro := a.client(t, roTok).Agent()
	anon := a.client(t, "").Agent()

	for name, ag := range map[string]*consul.Agent{"read-only": ro, "anonymous": anon} {
		if err := ag.ServiceRegister(&consul.AgentServiceRegistration{Name: "web"}); !isDenied(err) {
			t.Errorf("%s register web: got %v, want 403 Permission denied", name, err)
		}
	}
	if err := web.ServiceRegister(&consul.AgentServiceRegistration{Name: "web-frontend", ID: "web1", Port: 80}); err != nil {
		t.Fatalf("web token registers web-frontend: %v", err)
	}
	for _, n := range []string{"api", "web-secret"} {
		if err := web.ServiceRegister(&consul.AgentServiceRegistration{Name: n}); !isDenied(err) {
			t.Errorf("web token registers %s: got %v, want denied", n, err)
		}
	}
	if err := mgmt.ServiceRegister(&consul.AgentServiceRegistration{Name: "api", ID: "api1"}); err != nil {
		t.Fatalf("management registers api: %v", err)
	}
	// Nothing changed on a denial.
	svcs, err := mgmt.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 3 || svcs["web1"] == nil || svcs["api1"] == nil {
		t.Fatalf("services after denials: %v", svcs)
	}

	// Deregister: by the service's name behind the ID.
	if err := web.ServiceDeregister("api1"); !isDenied(err) {
		t.Errorf("web token deregisters api1: got %v, want denied", err)
	}
	if err := ro.ServiceDeregister("web1"); !isDenied(err) {
		t.Errorf("read-only deregisters web1: got %v, want denied", err)
	}
	if err := web.ServiceDeregister("web1"); err != nil {
		t.Errorf("web token deregisters web1: %v", err)
	}
	if err := mgmt.ServiceDeregister("api1"); err != nil {
		t.Errorf("management deregisters api1: %v", err)
	}
	if err := mgmt.ServiceDeregister("nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("management deregisters an unknown ID: got %v, want 404", err)
	}
	if err := web.ServiceDeregister("nope"); !isDenied(err) {
		t.Errorf("web token deregisters an unknown ID: got %v, want denied", err)
	}
}

func TestACLReadsFiltered(t *testing.T) {
	a := startACLAgent(t, testACL())
	mgmt := a.client(t, mgmtTok)
	for _, n := range []string{"web", "web-secret", "api"} {
		if err := mgmt.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: n, ID: n + "1",
			Check: &consul.AgentServiceCheck{TTL: "30s"}}); err != nil {
			t.Fatal(err)
		}
	}
	web := a.client(t, webTok)
	svcs, _, err := web.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := svcs["web-secret"]; ok || len(svcs) != 3 {
		t.Errorf("web token's catalog services: %v, want consul, web and api only", svcs)
	}
	agentSvcs, err := web.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if agentSvcs["web-secret1"] != nil || len(agentSvcs) != 3 {
		t.Errorf("web token's agent services: %v", agentSvcs)
	}
	checks, _, err := web.Health().State("any", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range checks {
		if c.ServiceName == "web-secret" {
			t.Errorf("health/state shows %v to the web token", c.CheckID)
		}
	}
	if len(checks) != 3 { // serfHealth, web's and api's
		t.Errorf("health/state: %d checks, want 3", len(checks))
	}
	// Direct lookups of a service the token may not read answer 403.
	if _, _, err := web.Health().Service("web-secret", "", false, nil); !isDenied(err) {
		t.Errorf("health/service/web-secret: got %v, want denied", err)
	}
	if _, _, err := web.Catalog().Service("web-secret", "", nil); !isDenied(err) {
		t.Errorf("catalog/service/web-secret: got %v, want denied", err)
	}
	if _, _, err := web.Agent().Service("web-secret1", nil); !isDenied(err) {
		t.Errorf("agent/service/web-secret1: got %v, want denied", err)
	}
	if _, _, err := web.Health().Service("api", "", false, nil); err != nil {
		t.Errorf("health/service/api with read: %v", err)
	}
	// A node's services and checks leave out those the token may not read.
	nt := a.client(t, nodeTok)
	cn, _, err := nt.Catalog().Node("node1", nil)
	if err != nil || cn == nil || cn.Services["web-secret1"] != nil || cn.Services["web1"] == nil {
		t.Errorf("catalog/node with web-secret denied: %+v %v", cn, err)
	}
	nl, _, err := nt.Catalog().NodeServiceList("node1", nil)
	if err != nil || nl == nil || len(nl.Services) != 3 { // consul, web, api
		t.Errorf("catalog/node-services with web-secret denied: %+v %v", nl, err)
	}
	nc, _, err := nt.Health().Node("node1", nil)
	for _, c := range nc {
		if c.ServiceName == "web-secret" {
			t.Errorf("health/node shows %v to a token denied web-secret", c.CheckID)
		}
	}
	if err != nil || len(nc) != 3 { // serfHealth, web's and api's
		t.Errorf("health/node: %d checks, %v; want 3", len(nc), err)
	}

	// Management sees everything.
	all, _, err := mgmt.Catalog().Services(nil)
	if err != nil || len(all) != 4 {
		t.Errorf("management's catalog: %v %v", all, err)
	}
	// An unknown token is refused, as Consul.
	if _, _, err := a.client(t, "not-a-token").Catalog().Services(nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("unknown token: got %v, want 403", err)
	}
}

func TestACLAnonymous(t *testing.T) {
	a := startACLAgent(t, testACL())
	if err := a.client(t, mgmtTok).Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	anon := a.client(t, "")
	svcs, _, err := anon.Catalog().Services(nil)
	if err != nil || len(svcs) != 2 {
		t.Errorf("anonymous read: %v %v", svcs, err)
	}
	if _, err := anon.KV().Put(&consul.KVPair{Key: "app/x", Value: []byte("1")}, nil); !isDenied(err) {
		t.Errorf("anonymous KV write: got %v, want denied", err)
	}
	if err := anon.Agent().ServiceDeregister("web"); !isDenied(err) {
		t.Errorf("anonymous deregister: got %v, want denied", err)
	}
	// The UI's files need no token, as Consul's UI.
	resp, err := http.Get(a.base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /ui/ without a token: %d", resp.StatusCode)
	}

	// default_policy allow without tokens.default: anonymous may do anything.
	open := startACLAgent(t, api.ACLConfig{Enabled: true, DefaultPolicy: "allow", InitialManagement: mgmtTok})
	if err := open.client(t, "").Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "x"}); err != nil {
		t.Errorf("default_policy allow, anonymous register: %v", err)
	}
}

func TestACLKV(t *testing.T) {
	a := startACLAgent(t, testACL())
	web := a.client(t, webTok).KV()
	ro := a.client(t, roTok).KV()
	if _, err := web.Put(&consul.KVPair{Key: "app/a", Value: []byte("1")}, nil); err != nil {
		t.Fatalf("web token writes app/a: %v", err)
	}
	if _, err := web.Put(&consul.KVPair{Key: "other/a", Value: []byte("1")}, nil); !isDenied(err) {
		t.Errorf("web token writes other/a: got %v, want denied", err)
	}
	if _, err := ro.Put(&consul.KVPair{Key: "app/b", Value: []byte("1")}, nil); !isDenied(err) {
		t.Errorf("read-only writes app/b: got %v, want denied", err)
	}
	if _, err := ro.Delete("app/a", nil); !isDenied(err) {
		t.Errorf("read-only deletes app/a: got %v, want denied", err)
	}
	p, _, err := ro.Get("app/a", nil)
	if err != nil || p == nil || string(p.Value) != "1" {
		t.Errorf("read-only reads app/a: %v %v", p, err)
	}
}

// The three ways Consul's clients carry a token, and the 403 body.
func TestACLTokenCarriers(t *testing.T) {
	a := startACLAgent(t, testACL())
	body := []byte(`{"Name":"web"}`)
	send := func(set func(*http.Request)) (int, string) {
		req, _ := http.NewRequest("PUT", a.base+"/v1/agent/service/register", bytes.NewReader(body))
		set(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, msg := send(func(*http.Request) {})
	if code != 403 || strings.TrimSpace(msg) != "Permission denied" {
		t.Errorf("no token: %d %q, want 403 Permission denied", code, msg)
	}
	for name, set := range map[string]func(*http.Request){
		"X-Consul-Token": func(r *http.Request) { r.Header.Set("X-Consul-Token", webTok) },
		"Bearer":         func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+webTok) },
		"?token=":        func(r *http.Request) { r.URL.RawQuery = "token=" + webTok },
	} {
		if code, msg := send(set); code != 200 {
			t.Errorf("%s: %d %q", name, code, msg)
		}
	}
	if strings.Contains(a.logs.String(), webTok) {
		t.Errorf("a token was logged: %s", a.logs.String())
	}
}

func TestACLPolicyRules(t *testing.T) {
	az, err := api.NewAuthorizer(testACL())
	if err != nil {
		t.Fatal(err)
	}
	web := az.Resolve(webTok)
	ro := az.Resolve(roTok)
	mgmt := az.Resolve(mgmtTok)
	anon := az.Resolve("")
	for _, c := range []struct {
		name string
		got  bool
		want bool
	}{
		{"web write web-1", web.ServiceWrite("web-1"), true},
		{"web write web-secret", web.ServiceWrite("web-secret"), false},
		{"web read web-secret", web.ServiceRead("web-secret"), false},
		{"web read api", web.ServiceRead("api"), true},
		{"web write api", web.ServiceWrite("api"), false},
		{"web key write app/x", web.KeyWrite("app/x"), true},
		{"web key read other", web.KeyRead("other"), false},
		{"web node read (default deny)", web.NodeRead("n"), false},
		{"ro service write", ro.ServiceWrite("web"), false},
		{"ro key read", ro.KeyRead("any"), true},
		{"ro operator read", ro.OperatorRead(), true},
		{"ro operator write", ro.OperatorWrite(), false},
		{"mgmt anything", mgmt.ServiceWrite("x") && mgmt.KeyWrite("y") && mgmt.OperatorWrite(), true},
		{"anon read", anon.ServiceRead("x"), true},
		{"anon write", anon.ServiceWrite("x"), false},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %v", c.name, c.got)
		}
	}
	for _, bad := range []string{"11111111", "11111111-mgmtX", "11111111-mgm", " " + mgmtTok} {
		if az.Resolve(bad) != nil {
			t.Errorf("Resolve(%q) found a token", bad)
		}
	}
	if off, err := api.NewAuthorizer(api.ACLConfig{}); off != nil || err != nil {
		t.Errorf("ACLs off: %v %v", off, err)
	}
	for _, bad := range []api.ACLConfig{
		{Enabled: true, DefaultPolicy: "maybe"},
		{Enabled: true, Tokens: []api.ACLToken{{Secret: "a", Rules: api.ACLRules{ServicePrefix: map[string]string{"": "all"}}}}},
		{Enabled: true, Tokens: []api.ACLToken{{Secret: ""}}},
		{Enabled: true, InitialManagement: "a", Tokens: []api.ACLToken{{Secret: "a"}}},
		{Enabled: true, Default: "missing"},
	} {
		if _, err := api.NewAuthorizer(bad); err == nil {
			t.Errorf("NewAuthorizer(%+v): no error", bad)
		} else if bad.InitialManagement != "" && strings.Contains(err.Error(), bad.InitialManagement+"\"") {
			t.Errorf("error shows the secret: %v", err)
		}
	}
}

// A request no route serves runs no handler: it gets the router's 404 or
// 405 whatever the token, as from Consul, not a 403 that hides the mistake.
func TestACLUnroutedRequests(t *testing.T) {
	a := startACLAgent(t, testACL())
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"PATCH", "/v1/kv/app/x", http.StatusMethodNotAllowed},
		{"GET", "/v1/catalog/service/a/b", http.StatusNotFound},
		{"GET", "/v1/nothing/here", http.StatusNotFound},
	} {
		for _, tok := range []string{roTok, webTok, ""} {
			req, _ := http.NewRequest(c.method, a.base+c.path, nil)
			if tok != "" {
				req.Header.Set("X-Consul-Token", tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s %s with token %q: %d, want %d", c.method, c.path, tok, resp.StatusCode, c.want)
			}
		}
	}
}
