package api_test

// Tests of the TTL, maintenance and agent health endpoints, with the health
// runner behind the API, through the official consul/api client and plain
// HTTP.

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/health"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

var _ api.Health = (*health.Runner)(nil)

type checksAgent struct {
	reg    *registry.Registry
	client *consul.Client
	base   string
}

// startChecksAgent runs a registry, a health runner (unless noRunner) and
// the API on loopback until the test ends.
func startChecksAgent(t *testing.T, scripts, noRunner bool) *checksAgent {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = "node1"
	rcfg.Address = "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	acfg := api.DefaultConfig()
	acfg.Registry = reg
	acfg.EnableScriptChecks = scripts
	var runDone chan error
	if !noRunner {
		hcfg := health.DefaultConfig()
		hcfg.Catalog = reg
		hcfg.EnableScriptChecks = scripts
		runner, err := health.New(hcfg)
		if err != nil {
			t.Fatal(err)
		}
		acfg.Health = runner
		runDone = make(chan error, 1)
		go func() { runDone <- runner.Run(ctx) }()
	}
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-srvDone; err != nil {
			t.Errorf("api Run: %v", err)
		}
		if runDone != nil {
			if err := <-runDone; err != nil {
				t.Errorf("health Run: %v", err)
			}
		}
	})
	client, err := consul.NewClient(&consul.Config{Address: ln.Addr().String(), Scheme: "http"})
	if err != nil {
		t.Fatal(err)
	}
	return &checksAgent{reg: reg, client: client, base: "http://" + ln.Addr().String()}
}

func (a *checksAgent) do(t *testing.T, method, path, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, a.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func (a *checksAgent) check(t *testing.T, id string) *consul.AgentCheck {
	t.Helper()
	checks, err := a.client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	return checks[id]
}

func (a *checksAgent) wantCheck(t *testing.T, id, status, output string) {
	t.Helper()
	c := a.check(t, id)
	if c == nil || c.Status != status || c.Output != output {
		t.Errorf("%s: %+v, want %s %q", id, c, status, output)
	}
}

func (a *checksAgent) checksJSON(t *testing.T) string {
	t.Helper()
	_, body, _ := a.do(t, "GET", "/v1/agent/checks", "")
	return body
}

func TestTTLEndpoints(t *testing.T) {
	for _, noRunner := range []bool{false, true} {
		a := startChecksAgent(t, false, noRunner)
		ag := a.client.Agent()
		err := ag.ServiceRegister(&consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80,
			Checks: consul.AgentServiceChecks{{TTL: "30s"}, {TCP: "127.0.0.1:1", Interval: "1h"}}})
		if err != nil {
			t.Fatal(err)
		}
		a.wantCheck(t, "service:web1:1", "critical", "")
		for _, step := range []struct {
			fn     func(string, string) error
			status string
		}{{ag.PassTTL, "passing"}, {ag.WarnTTL, "warning"}, {ag.FailTTL, "critical"}, {ag.PassTTL, "passing"}} {
			if err := step.fn("service:web1:1", "note "+step.status); err != nil {
				t.Fatalf("%s: %v", step.status, err)
			}
			a.wantCheck(t, "service:web1:1", step.status, "note "+step.status)
		}
		if err := ag.UpdateTTL("service:web1:1", "from update", "warn"); err != nil {
			t.Fatal(err)
		}
		a.wantCheck(t, "service:web1:1", "warning", "from update")
		// A standalone TTL check, updated at once after its registration.
		if err := ag.CheckRegister(&consul.AgentCheckRegistration{ID: "job", Name: "job", AgentServiceCheck: consul.AgentServiceCheck{TTL: "10s"}}); err != nil {
			t.Fatal(err)
		}
		if err := ag.PassTTL("job", ""); err != nil {
			t.Fatal(err)
		}
		a.wantCheck(t, "job", "passing", "")

		// Plain HTTP: POST works as PUT; bad input answers 400/404/405 and
		// changes nothing.
		if code, body, _ := a.do(t, "POST", "/v1/agent/check/fail/job?note=down", ""); code != 200 {
			t.Errorf("POST fail: %d %s", code, body)
		}
		a.wantCheck(t, "job", "critical", "down")
		before := a.checksJSON(t)
		for _, c := range []struct {
			method, path, body string
			code               int
			msg                string
		}{
			{"PUT", "/v1/agent/check/pass/nope", "", 404, `CheckID "nope" does not have associated TTL`},
			{"PUT", "/v1/agent/check/pass/service:web1:2", "", 404, "does not have associated TTL"},
			{"PUT", "/v1/agent/check/update/nope", `{"Status":"passing"}`, 404, "does not have associated TTL"},
			{"PUT", "/v1/agent/check/update/job", `{"Status":"bogus"}`, 400, "Status"},
			{"PUT", "/v1/agent/check/update/job", `{"Status":"maintenance"}`, 400, "Status"},
			{"PUT", "/v1/agent/check/update/job", `{"Status":`, 400, "decode"},
			{"PUT", "/v1/agent/check/update/job", ``, 400, "Status"},
			{"GET", "/v1/agent/check/pass/job", "", 405, ""},
		} {
			code, body, _ := a.do(t, c.method, c.path, c.body)
			if code != c.code || !strings.Contains(body, c.msg) || strings.Count(body, "\n") != 1 && code != 405 {
				t.Errorf("%s %s %s: %d %q, want %d with %q", c.method, c.path, c.body, code, body, c.code, c.msg)
			}
		}
		if after := a.checksJSON(t); after != before {
			t.Errorf("bad TTL updates changed the checks:\n%s\n%s", before, after)
		}
		// Output is cut at 4 KiB.
		if err := ag.UpdateTTL("job", strings.Repeat("z", 5000), "pass"); err != nil {
			t.Fatal(err)
		}
		if c := a.check(t, "job"); len(c.Output) != 4096 {
			t.Errorf("output of %d bytes", len(c.Output))
		}
	}
}

// TestTTLExpires waits (on blocking queries, not sleeps) for a 1s TTL to
// run out.
func TestTTLExpires(t *testing.T) {
	a := startChecksAgent(t, false, false)
	if err := a.client.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "job1", Name: "job",
		Check: &consul.AgentServiceCheck{TTL: "1s", Status: "passing"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.client.Agent().PassTTL("service:job1", "alive"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var idx uint64
	for {
		checks, meta, err := a.client.Health().Checks("job", &consul.QueryOptions{WaitIndex: idx, WaitTime: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		idx = meta.LastIndex
		if len(checks) == 1 && checks[0].Status == "critical" {
			if want := "TTL expired (last output before timeout follows): alive"; checks[0].Output != want {
				t.Errorf("output %q, want %q", checks[0].Output, want)
			}
			if d := time.Since(start); d < time.Second-50*time.Millisecond {
				t.Errorf("expired after %v, before its TTL", d)
			}
			return
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("the TTL did not expire in 20s: %+v", checks[0])
		}
	}
}

func TestMaintenance(t *testing.T) {
	a := startChecksAgent(t, false, false)
	ag := a.client.Agent()
	for _, id := range []string{"redis1", "redis2"} {
		if err := ag.ServiceRegister(&consul.AgentServiceRegistration{ID: id, Name: "redis", Port: 6379}); err != nil {
			t.Fatal(err)
		}
	}
	passing := func() []string {
		entries, _, err := a.client.Health().Service("redis", "", true, nil)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range entries {
			ids = append(ids, e.Service.ID)
		}
		return ids
	}
	if got := passing(); len(got) != 2 {
		t.Fatalf("passing before maintenance: %v", got)
	}

	if err := ag.EnableServiceMaintenance("redis1", "deploy v2"); err != nil {
		t.Fatal(err)
	}
	c := a.check(t, "_service_maintenance:redis1")
	if c == nil || c.Status != "critical" || c.Notes != "deploy v2" || c.ServiceID != "redis1" || c.Name != "Service Maintenance Mode" {
		t.Fatalf("maintenance check: %+v", c)
	}
	if got := passing(); len(got) != 1 || got[0] != "redis2" {
		t.Errorf("passing in maintenance: %v", got)
	}
	status, info, err := ag.AgentHealthServiceByID("redis1")
	if err != nil || status != "critical" || info == nil || info.AggregatedStatus != "maintenance" {
		t.Errorf("AgentHealthServiceByID in maintenance: %s %+v %v", status, info, err)
	}
	// Enabling again keeps the first reason, as Consul does.
	ag.EnableServiceMaintenance("redis1", "other")
	if c := a.check(t, "_service_maintenance:redis1"); c.Notes != "deploy v2" {
		t.Errorf("reason after a second enable: %q", c.Notes)
	}
	if err := ag.DisableServiceMaintenance("redis1"); err != nil {
		t.Fatal(err)
	}
	if c := a.check(t, "_service_maintenance:redis1"); c != nil {
		t.Errorf("still in maintenance: %+v", c)
	}
	if err := ag.DisableServiceMaintenance("redis1"); err != nil {
		t.Errorf("disabling twice: %v", err)
	}

	// The node's maintenance takes every service out; the default reason
	// is Consul's.
	if code, body, _ := a.do(t, "POST", "/v1/agent/maintenance?enable=true", ""); code != 200 {
		t.Fatalf("node maintenance: %d %s", code, body)
	}
	c = a.check(t, "_node_maintenance")
	if c == nil || c.Status != "critical" || !strings.Contains(c.Notes, "no reason was provided") || c.ServiceID != "" {
		t.Errorf("node maintenance check: %+v", c)
	}
	if got := passing(); len(got) != 0 {
		t.Errorf("passing with the node in maintenance: %v", got)
	}
	if err := ag.DisableNodeMaintenance(); err != nil {
		t.Fatal(err)
	}
	if got := passing(); len(got) != 2 {
		t.Errorf("passing after maintenance: %v", got)
	}

	before := a.checksJSON(t)
	for _, c := range []struct {
		path string
		code int
		msg  string
	}{
		{"/v1/agent/service/maintenance/nope?enable=true", 404, `Unknown service ID "nope"`},
		{"/v1/agent/service/maintenance/redis1", 400, "enable"},
		{"/v1/agent/service/maintenance/redis1?enable=maybe", 400, "enable"},
		{"/v1/agent/maintenance?enable=", 400, "enable"},
	} {
		if code, body, _ := a.do(t, "PUT", c.path, ""); code != c.code || !strings.Contains(body, c.msg) {
			t.Errorf("PUT %s: %d %q, want %d with %q", c.path, code, body, c.code, c.msg)
		}
	}
	if after := a.checksJSON(t); after != before {
		t.Errorf("bad maintenance requests changed the checks:\n%s\n%s", before, after)
	}
}

func TestAgentHealthEndpoints(t *testing.T) {
	a := startChecksAgent(t, false, false)
	ag := a.client.Agent()
	for _, id := range []string{"web1", "web2"} {
		if err := ag.ServiceRegister(&consul.AgentServiceRegistration{ID: id, Name: "web", Port: 80, Tags: []string{"v1"},
			Check: &consul.AgentServiceCheck{TTL: "1m"}}); err != nil {
			t.Fatal(err)
		}
	}
	ag.PassTTL("service:web1", "")
	ag.PassTTL("service:web2", "")
	status, info, err := ag.AgentHealthServiceByID("web1")
	if err != nil || status != "passing" || info.AggregatedStatus != "passing" || info.Service.ID != "web1" ||
		len(info.Checks) != 1 || info.Checks[0].CheckID != "service:web1" || len(info.Checks[0].ServiceTags) != 1 {
		t.Fatalf("by ID, passing: %s %+v %v", status, info, err)
	}
	ag.WarnTTL("service:web2", "slow")
	if status, _, _ := ag.AgentHealthServiceByID("web2"); status != "warning" {
		t.Errorf("by ID, warning: %s", status)
	}
	status, infos, err := ag.AgentHealthServiceByName("web")
	if err != nil || status != "warning" || len(infos) != 2 {
		t.Errorf("by name, one warning: %s %+v %v", status, infos, err)
	}
	ag.FailTTL("service:web1", "down")
	if status, _, _ := ag.AgentHealthServiceByName("web"); status != "critical" {
		t.Errorf("by name, one critical: %s", status)
	}
	if status, info, err := ag.AgentHealthServiceByID("nope"); status != "critical" || info != nil || err != nil {
		t.Errorf("unknown ID: %s %+v %v", status, info, err)
	}
	if status, infos, err := ag.AgentHealthServiceByName("nope"); status != "critical" || infos != nil || err != nil {
		t.Errorf("unknown name: %s %+v %v", status, infos, err)
	}

	// Plain HTTP: codes, text format, the 404 shapes.
	for _, c := range []struct {
		path, accept string
		code         int
		body, ctype  string
	}{
		{"/v1/agent/health/service/id/web1?format=text", "", 503, "critical", "text/plain"},
		{"/v1/agent/health/service/id/web2", "text/plain", 429, "warning", "text/plain"},
		{"/v1/agent/health/service/name/web?format=text", "", 503, "critical", "text/plain"},
		{"/v1/agent/health/service/id/nope?format=text", "", 404, "ServiceId nope not found", "text/plain"},
		{"/v1/agent/health/service/name/nope?format=text", "", 404, "ServiceName nope Not Found", "text/plain"},
		{"/v1/agent/health/service/id/nope", "", 404, `{"AggregatedStatus":"critical","Service":null,"Checks":null}`, "application/json"},
		{"/v1/agent/health/service/name/nope", "", 404, `[]`, "application/json"},
	} {
		req, _ := http.NewRequest("GET", a.base+c.path, nil)
		if c.accept != "" {
			req.Header.Set("Accept", c.accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || strings.TrimSpace(string(b)) != c.body || !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) {
			t.Errorf("GET %s: %d %s %q, want %d %s %q", c.path, resp.StatusCode, resp.Header.Get("Content-Type"), b, c.code, c.ctype, c.body)
		}
	}
	var got struct {
		AggregatedStatus string
		Service          struct{ ID, Service string }
		Checks           []struct{ CheckID, Status, Output string }
	}
	_, body, _ := a.do(t, "GET", "/v1/agent/health/service/id/web2", "")
	if err := json.Unmarshal([]byte(body), &got); err != nil || got.AggregatedStatus != "warning" || got.Service.ID != "web2" || got.Checks[0].Output != "slow" {
		t.Errorf("JSON shape: %v %s", err, body)
	}
}

func TestScriptChecksRefused(t *testing.T) {
	a := startChecksAgent(t, false, false)
	before := a.checksJSON(t)
	_, svcsBefore, _ := a.do(t, "GET", "/v1/agent/services", "")
	for _, c := range []struct{ path, body, field string }{
		{"/v1/agent/service/register", `{"Name":"s","Check":{"Args":["/bin/true"],"Interval":"10s"}}`, "Check.Args"},
		{"/v1/agent/service/register", `{"Name":"s","Checks":[{"TTL":"10s"},{"ScriptArgs":["/bin/true"],"Interval":"10s"}]}`, "Checks[1].Args"},
		{"/v1/agent/check/register", `{"Name":"c","Args":["/bin/true"],"Interval":"10s"}`, "Args"},
	} {
		code, body, _ := a.do(t, "PUT", c.path, c.body)
		if code != 400 || !strings.Contains(body, c.field+": script checks are disabled") || strings.Count(body, "\n") != 1 {
			t.Errorf("%s %s: %d %q, want 400 naming %s", c.path, c.body, code, body, c.field)
		}
	}
	// Other bad checks: no type, two types, bad durations.
	for _, c := range []struct{ body, msg string }{
		{`{"Name":"s","Check":{"Interval":"10s"}}`, "no check type"},
		{`{"Name":"s","Check":{"HTTP":"http://127.0.0.1/","TCP":"127.0.0.1:1","Interval":"10s"}}`, "more than one check type"},
		{`{"Name":"s","Check":{"TCP":"127.0.0.1:1","Interval":"often"}}`, "Check.Interval"},
		{`{"Name":"s","Check":{"TTL":"-5s"}}`, "Check.TTL"},
		{`{"Name":"s","Check":{"TCP":"127.0.0.1:1","Interval":"10s","DeregisterCriticalServiceAfter":"soon"}}`, "Check.DeregisterCriticalServiceAfter"},
	} {
		if code, body, _ := a.do(t, "PUT", "/v1/agent/service/register", c.body); code != 400 || !strings.Contains(body, c.msg) {
			t.Errorf("%s: %d %q, want 400 with %q", c.body, code, body, c.msg)
		}
	}
	_, svcsAfter, _ := a.do(t, "GET", "/v1/agent/services", "")
	if after := a.checksJSON(t); after != before || svcsAfter != svcsBefore {
		t.Errorf("refused registrations changed the catalog:\n%s\n%s", before, after)
	}

	b := startChecksAgent(t, true, false)
	if code, body, _ := b.do(t, "PUT", "/v1/agent/service/register", `{"Name":"s","Check":{"Args":["/bin/true"],"Interval":"10s"}}`); code != 200 {
		t.Errorf("with script checks enabled: %d %s", code, body)
	}
}

// Re-registering a service with the same checks keeps their status (as
// Consul does since hashicorp/consul#868): Registrator re-registers on every
// resync, and a reset to critical would drain the instance each time.
func TestReregistrationKeepsCheckStatus(t *testing.T) {
	a := startChecksAgent(t, false, false)
	ag := a.client.Agent()
	reg := &consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80,
		Checks: consul.AgentServiceChecks{{TTL: "1m"}, {TTL: "1m", Notes: "second"}}}
	if err := ag.ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	ag.PassTTL("service:web1:1", "fine")
	ag.WarnTTL("service:web1:2", "slow")
	if err := ag.ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	a.wantCheck(t, "service:web1:1", "passing", "fine")
	a.wantCheck(t, "service:web1:2", "warning", "slow")
	// A changed definition starts again from the initial status.
	reg.Checks[1].TTL = "2m"
	if err := ag.ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	a.wantCheck(t, "service:web1:1", "passing", "fine")
	a.wantCheck(t, "service:web1:2", "critical", "")
	// The same for a standalone check.
	chk := &consul.AgentCheckRegistration{ID: "job", Name: "job", AgentServiceCheck: consul.AgentServiceCheck{TTL: "1m"}}
	ag.CheckRegister(chk)
	ag.PassTTL("job", "done")
	ag.CheckRegister(chk)
	a.wantCheck(t, "job", "passing", "done")
}
