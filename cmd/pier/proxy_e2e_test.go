package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var proxyLine = regexp.MustCompile(`msg="pier agent running".* proxy=([0-9.:]+)`)

// proxyAddr reads the proxy's address from the agent's "running" line.
func (p *proc) proxyAddr() string {
	p.t.Helper()
	m := proxyLine.FindStringSubmatch(p.logs())
	if m == nil {
		p.t.Fatalf("no proxy= in the agent's log:\n%s", p.logs())
	}
	return m[1]
}

// TestProxyEndToEnd runs the built binary as a front door: a route from the
// config file, a backend registered with curl, its answer through the
// proxy, pier routes, and a 502 naming the service once it is gone.
func TestProxyEndToEnd(t *testing.T) {
	requireCurl(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from api: %s %s xff=%s\n", r.Method, r.URL.RequestURI(), r.Header.Get("X-Forwarded-For"))
	})}
	go backend.Serve(ln)
	defer backend.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(`
proxy:
  addr: 127.0.0.1:0
  routes:
    - path: /api/
      service: api
      strip: /api
  max_fails: 2
  fail_timeout: 5s
`), 0o600)
	a := startAgent(t, "-dev", "-node", "front", "-config-file", cfg)
	proxy := "http://" + a.proxyAddr()

	code, body := curl(t, proxy+"/api/users?id=7")
	if code != 502 || !strings.Contains(body, `"api"`) {
		t.Errorf("before registering: %d %q", code, body)
	}
	code, body = curl(t, "-X", "PUT", "-d", fmt.Sprintf(`{"ID":"api-1","Name":"api","Address":"127.0.0.1","Port":%d}`, port), "http://"+a.addr+"/v1/agent/service/register")
	if code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	code, body = curl(t, proxy+"/api/users?id=7")
	if code != 200 || !strings.Contains(body, "hello from api: GET /users?id=7 xff=127.0.0.1") {
		t.Errorf("through the proxy: %d %q\nagent log:\n%s", code, body, a.logs())
	}
	if code, _ := curl(t, proxy+"/elsewhere"); code != 404 {
		t.Errorf("no route: %d", code)
	}

	out, errOut, rc := pier(t, "routes", "-http-addr", a.addr)
	if rc != 0 || !regexp.MustCompile(`\*/api/\s+api\s+strip /api\s+config\s+1/1\s+127\.0\.0\.1:`+fmt.Sprint(port)).MatchString(out) {
		t.Errorf("pier routes: rc=%d\n%s%s", rc, out, errOut)
	}

	code, body = curl(t, "-X", "PUT", "http://"+a.addr+"/v1/agent/service/deregister/api-1")
	if code != 200 {
		t.Fatalf("deregister: %d %s", code, body)
	}
	code, body = curl(t, proxy+"/api/users")
	if code != 502 || !strings.Contains(body, `no healthy instance of service "api"`) {
		t.Errorf("after deregistering: %d %q", code, body)
	}

	// An agent without a proxy says so.
	b := startAgent(t, "-node", "plain", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	_, errOut, rc = pier(t, "routes", "-http-addr", b.addr)
	if rc != 1 || !strings.Contains(errOut, "runs no proxy") {
		t.Errorf("pier routes on an agent without a proxy: rc=%d %q", rc, errOut)
	}
}

// TestProxyBadConfig: mistakes in the proxy's flags or config section stop
// the agent with one line that names them.
func TestProxyBadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	badDur := write("dur.yaml", "proxy:\n  fail_timeout: soon\n")
	badRoute := write("route.yaml", "proxy:\n  addr: 127.0.0.1:0\n  routes:\n    - path: api\n      service: api\n")
	badKey := write("key.yaml", "proxy:\n  max_fail: 3\n")
	base := []string{"agent", "-dev", "-http-port", "0", "-serf-lan-port", "0"}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-proxy-addr", "nonsense"}, 2, "-proxy-addr"},
		{[]string{"-proxy-addr", "127.0.0.1:99999"}, 2, "port out of range"},
		{[]string{"-proxy-addr", "localhost:80"}, 2, "not an IP address"},
		{[]string{"-config-file", badDur}, 1, "proxy.fail_timeout"},
		{[]string{"-config-file", badRoute}, 1, "the path must start with /"},
		{[]string{"-config-file", badKey}, 1, "unknown key"},
	}
	for _, c := range cases {
		_, errOut, code := pier(t, append(append([]string{}, base...), c.args...)...)
		if code != c.code || !strings.Contains(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("pier %v: exit %d, stderr %q; want exit %d and one line with %q", c.args, code, errOut, c.code, c.want)
		}
	}
}
