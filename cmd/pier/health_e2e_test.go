package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// waitFor polls path with blocking queries (each returns as soon as the
// answer changes) until cond holds for the body, or fails after 30s.
func waitFor(t *testing.T, base, path string, cond func(body string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	index := "0"
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	var body string
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + path + sep + "index=" + index + "&wait=5s")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		if resp.StatusCode == 200 && cond(body) {
			return body
		}
		index = resp.Header.Get("X-Consul-Index")
	}
	t.Fatalf("GET %s: condition not met in 30s; last answer %s", path, body)
	return ""
}

func instances(body string) int {
	var list []json.RawMessage
	json.Unmarshal([]byte(body), &list)
	return len(list)
}

// checkTarget is what an HTTP check probes: it answers the status in code
// (200 to begin with), with the body "status N"; it stops with the test.
func checkTarget(t *testing.T) (*httptest.Server, *atomic.Int32) {
	code := new(atomic.Int32)
	code.Store(200)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(int(code.Load()))
		io.WriteString(w, "status "+strconv.Itoa(int(code.Load())))
	}))
	t.Cleanup(target.Close)
	return target, code
}

// TestHealthChecksE2E registers a service with an HTTP check against a
// loopback server, watches it pass, flips the server and watches the
// instance leave ?passing; then maintenance with pier maint, a TTL check
// with curl, and the refusal of script checks.
func TestHealthChecksE2E(t *testing.T) {
	requireCurl(t)
	target, code := checkTarget(t)

	dir := t.TempDir()
	args := []string{"-node", "h1", "-data-dir", dir, "-bind", "127.0.0.1"}
	a := startAgent(t, args...)
	base := "http://" + a.addr

	c, body := curl(t, "-X", "PUT", "-d", `{"ID":"x1","Name":"x","Port":8080,"Check":{"HTTP":"`+target.URL+`/health","Interval":"1s","Timeout":"1s"}}`, base+"/v1/agent/service/register")
	if c != 200 {
		t.Fatalf("register: %d %s", c, body)
	}
	// Critical until the first probe, as in Consul; passing after it.
	waitFor(t, base, "/v1/health/service/x?passing", func(b string) bool { return instances(b) == 1 })
	_, body = curl(t, base+"/v1/agent/checks")
	if !strings.Contains(body, `"Status":"passing"`) || !strings.Contains(body, "200 OK Output: status 200") {
		t.Errorf("agent/checks while passing: %s", body)
	}

	code.Store(500)
	waitFor(t, base, "/v1/health/service/x?passing", func(b string) bool { return instances(b) == 0 })
	_, body = curl(t, base+"/v1/health/checks/x")
	if !strings.Contains(body, `"Status":"critical"`) || !strings.Contains(body, "500 Internal Server Error Output: status 500") {
		t.Errorf("health/checks while failing: %s", body)
	}
	c, body = curl(t, base+"/v1/agent/health/service/id/x1?format=text")
	if c != 503 || body != "critical" {
		t.Errorf("agent/health/service/id while failing: %d %q", c, body)
	}
	code.Store(200)
	waitFor(t, base, "/v1/health/service/x?passing", func(b string) bool { return instances(b) == 1 })

	// Maintenance with the CLI drains the instance, and survives a restart.
	out, errOut, rc := pier(t, "maint", "-http-addr", a.addr, "-enable", "-service", "x1", "-reason", "deploy v2")
	if rc != 0 || out != "Service maintenance is now enabled for \"x1\"\n" {
		t.Errorf("pier maint -enable: rc=%d %q %q", rc, out, errOut)
	}
	if _, b := curl(t, base+"/v1/health/service/x?passing"); instances(b) != 0 {
		t.Errorf("in maintenance but still passing: %s", b)
	}
	out, _, rc = pier(t, "maint", "-http-addr", a.addr)
	if rc != 0 || !strings.Contains(out, "Service:\n  ID:     x1\n  Reason: deploy v2\n") {
		t.Errorf("pier maint (list): rc=%d %q", rc, out)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop: %v\n%s", err, a.logs())
	}
	a = startAgent(t, args...)
	base = "http://" + a.addr
	_, body = curl(t, base+"/v1/agent/checks")
	if !strings.Contains(body, `"_service_maintenance:x1"`) || !strings.Contains(body, "deploy v2") {
		t.Errorf("maintenance lost in a restart: %s", body)
	}
	out, _, rc = pier(t, "maint", "-http-addr", a.addr, "-disable", "-service", "x1")
	if rc != 0 || !strings.Contains(out, "disabled") {
		t.Errorf("pier maint -disable: rc=%d %q", rc, out)
	}
	waitFor(t, base, "/v1/health/service/x?passing", func(b string) bool { return instances(b) == 1 })
	out, _, rc = pier(t, "maint", "-http-addr", a.addr, "-enable", "-reason", "kernel update")
	if rc != 0 || out != "Node maintenance is now enabled\n" {
		t.Errorf("pier maint -enable (node): rc=%d %q", rc, out)
	}
	if _, b := curl(t, base+"/v1/health/service/x?passing"); instances(b) != 0 {
		t.Errorf("node in maintenance but x still passing: %s", b)
	}
	pier(t, "maint", "-http-addr", a.addr, "-disable")
	for _, bad := range [][]string{{"-enable", "-disable"}, {"-disable", "-reason", "r"}, {"-service", "x1"}} {
		if _, errOut, rc := pier(t, append([]string{"maint", "-http-addr", a.addr}, bad...)...); rc != 2 || strings.Count(errOut, "\n") != 1 {
			t.Errorf("pier maint %v: rc=%d %q", bad, rc, errOut)
		}
	}
	if _, errOut, rc := pier(t, "maint", "-http-addr", a.addr, "-enable", "-service", "nope"); rc != 1 || !strings.Contains(errOut, "404") {
		t.Errorf("pier maint on an unknown service: rc=%d %q", rc, errOut)
	}

	// A TTL check driven with curl, as a cron job would.
	c, body = curl(t, "-X", "PUT", "-d", `{"ID":"job1","Name":"job","Check":{"TTL":"1m"}}`, base+"/v1/agent/service/register")
	if c != 200 {
		t.Fatalf("register job: %d %s", c, body)
	}
	if c, body = curl(t, "-X", "PUT", base+"/v1/agent/check/pass/service:job1?note=ran+ok"); c != 200 {
		t.Errorf("check/pass: %d %s", c, body)
	}
	if _, b := curl(t, base+"/v1/health/service/job?passing"); instances(b) != 1 || !strings.Contains(b, `"Output":"ran ok"`) {
		t.Errorf("after check/pass: %s", b)
	}
	if c, body = curl(t, "-X", "PUT", base+"/v1/agent/check/pass/service:x1"); c != 404 || !strings.Contains(body, "does not have associated TTL") {
		t.Errorf("check/pass on an HTTP check: %d %s", c, body)
	}

	// Script checks are refused unless the agent allows them.
	c, body = curl(t, "-X", "PUT", "-d", `{"Name":"s","Check":{"Args":["/bin/true"],"Interval":"10s"}}`, base+"/v1/agent/service/register")
	if c != 400 || !strings.Contains(body, "Check.Args") {
		t.Errorf("script check without -enable-script-checks: %d %s", c, body)
	}
}

// TestScriptChecksE2E runs script checks on an agent that allows them (the
// flag, or enable_script_checks in a config file), and refuses to start
// with a script check in a config file otherwise.
func TestScriptChecksE2E(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, "-dev", "-enable-script-checks")
	base := "http://" + a.addr
	c, body := curl(t, "-X", "PUT", "-d", `{"Name":"s","Check":{"Args":["/bin/sh","-c","echo all good"],"Interval":"1s"}}`, base+"/v1/agent/service/register")
	if c != 200 {
		t.Fatalf("register: %d %s", c, body)
	}
	body = waitFor(t, base, "/v1/health/service/s?passing", func(b string) bool { return instances(b) == 1 })
	if !strings.Contains(body, `"Output":"all good\n"`) {
		t.Errorf("script output: %s", body)
	}

	a.stop(syscall.SIGTERM) // one -dev agent at a time: they share default ports

	dir := t.TempDir()
	svc := "services:\n  - name: cron\n    check: {args: [/bin/sh, -c, 'exit 1'], interval: 1s}\n"
	cfg := filepath.Join(dir, "on.yaml")
	os.WriteFile(cfg, []byte("enable_script_checks: true\n"+svc), 0o600)
	b := startAgent(t, "-dev", "-config-file", cfg)
	body = waitFor(t, "http://"+b.addr, "/v1/health/checks/cron", func(b string) bool { return strings.Contains(b, `"Status":"warning"`) })

	off := filepath.Join(dir, "off.yaml")
	os.WriteFile(off, []byte(svc), 0o600)
	_, errOut, rc := pier(t, "agent", "-dev", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0", "-config-file", off)
	if rc != 1 || !strings.Contains(errOut, "Args: script checks are disabled") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("script check in a config file without enable_script_checks: rc=%d %q", rc, errOut)
	}
}

// TestHealthStatusAcrossNodes: a check runs on the node that owns the
// service, and the other node's catalog follows each change of its status,
// maintenance included.
func TestHealthStatusAcrossNodes(t *testing.T) {
	requireCurl(t)
	target, code := checkTarget(t)
	a := startAgent(t, "-node", "ha", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	b := startAgent(t, "-node", "hb", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	baseA := "http://" + a.addr

	c, body := curl(t, "-X", "PUT", "-d", `{"ID":"x1","Name":"x","Port":8080,"Check":{"HTTP":"`+target.URL+`","Interval":"1s"}}`, "http://"+b.addr+"/v1/agent/service/register")
	if c != 200 {
		t.Fatalf("register on hb: %d %s", c, body)
	}
	body = waitFor(t, baseA, "/v1/health/service/x?passing", func(b string) bool { return instances(b) == 1 })
	if !strings.Contains(body, `"Node":"hb"`) {
		t.Errorf("ha sees %s", body)
	}
	code.Store(503)
	waitFor(t, baseA, "/v1/health/service/x?passing", func(b string) bool { return instances(b) == 0 })
	body = waitFor(t, baseA, "/v1/health/checks/x", func(b string) bool { return strings.Contains(b, "503 Service Unavailable") })
	code.Store(200)
	waitFor(t, baseA, "/v1/health/service/x?passing", func(b string) bool { return instances(b) == 1 })

	if _, errOut, rc := pier(t, "maint", "-http-addr", b.addr, "-enable", "-service", "x1", "-reason", "drain"); rc != 0 {
		t.Fatalf("pier maint: %s", errOut)
	}
	body = waitFor(t, baseA, "/v1/health/service/x", func(b string) bool { return strings.Contains(b, "_service_maintenance:x1") })
	if _, b := curl(t, baseA+"/v1/health/service/x?passing"); instances(b) != 0 {
		t.Errorf("in maintenance on hb, passing on ha: %s", b)
	}
	if !strings.Contains(body, `"Notes":"drain"`) {
		t.Errorf("the reason did not travel: %s", body)
	}
}

// TestMaintenanceOfConfigServiceSurvivesRestart: a service from a config
// file stays in maintenance across a restart, as in Consul.
func TestMaintenanceOfConfigServiceSurvivesRestart(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte("node_name: m1\nbind_addr: 127.0.0.1\ndata_dir: "+filepath.Join(dir, "data")+"\nservice: {id: web1, name: web, port: 80}\n"), 0o600)
	a := startAgent(t, "-config-file", cfg)
	if _, errOut, rc := pier(t, "maint", "-http-addr", a.addr, "-enable", "-service", "web1", "-reason", "disk swap"); rc != 0 {
		t.Fatalf("pier maint: %s", errOut)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a = startAgent(t, "-config-file", cfg)
	out, _, rc := pier(t, "maint", "-http-addr", a.addr)
	if rc != 0 || !strings.Contains(out, "ID:     web1\n  Reason: disk swap") {
		t.Errorf("after a restart: rc=%d %q\n%s", rc, out, a.logs())
	}
	pier(t, "maint", "-http-addr", a.addr, "-disable", "-service", "web1")
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	a = startAgent(t, "-config-file", cfg)
	if _, b := curl(t, "http://"+a.addr+"/v1/health/service/web?passing"); instances(b) != 1 {
		t.Errorf("maintenance came back after -disable and a restart: %s", b)
	}
}

// TestTTLStateSurvivesRestart: a TTL check passed with curl is still passing,
// with its output, the moment a restarted agent answers, and expires when it
// would have had the agent not stopped; one whose TTL ran out while the
// agent was down comes back critical.
func TestTTLStateSurvivesRestart(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	args := []string{"-node", "ttl1", "-data-dir", dir, "-bind", "127.0.0.1"}
	a := startAgent(t, args...)
	base := "http://" + a.addr
	for _, reg := range []string{
		`{"ID":"job-1","Name":"job","Port":1,"Check":{"CheckID":"job-alive","TTL":"12s"}}`,
		`{"ID":"job-2","Name":"job","Port":2,"Check":{"CheckID":"job-short","TTL":"1s"}}`,
	} {
		if code, body := curl(t, "-X", "PUT", "-d", reg, base+"/v1/agent/service/register"); code != 200 {
			t.Fatalf("register: %d %s", code, body)
		}
	}
	for _, id := range []string{"job-alive", "job-short"} {
		if code, body := curl(t, "-X", "PUT", base+"/v1/agent/check/pass/"+id+"?note=fine"); code != 200 {
			t.Fatalf("pass %s: %d %s", id, code, body)
		}
	}
	passed := time.Now()
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Down for 5 s: job-short runs out, and an agent that started job-alive's
	// TTL over would expire it 17 s or more after it was passed.
	time.Sleep(time.Until(passed.Add(5 * time.Second)))

	b := startAgent(t, args...)
	base = "http://" + b.addr
	checks := func() map[string]struct{ Status, Output string } {
		t.Helper()
		_, body := curl(t, base+"/v1/agent/checks")
		var m map[string]struct{ Status, Output string }
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("/v1/agent/checks: %v %s", err, body)
		}
		return m
	}
	m := checks()
	if c := m["job-alive"]; c.Status != "passing" || c.Output != "fine" {
		t.Errorf("job-alive after restart: %+v\n%s", c, b.logs())
	}
	if c := m["job-short"]; c.Status != "critical" {
		t.Errorf("job-short, run out while the agent was down: %+v", c)
	}
	// It runs out 12 s after it was passed, not 12 s after the restart.
	waitFor(t, base, "/v1/health/checks/job", func(body string) bool {
		return !strings.Contains(body, `"Status":"passing"`)
	})
	if late := time.Since(passed); late < 11*time.Second || late > 15500*time.Millisecond {
		t.Errorf("job-alive expired %v after it was passed, want about 12s", late.Round(time.Millisecond))
	}
	if c := checks()["job-alive"]; c.Status != "critical" || !strings.Contains(c.Output, "TTL expired") || !strings.Contains(c.Output, "fine") {
		t.Errorf("job-alive after its TTL: %+v", c)
	}
}
