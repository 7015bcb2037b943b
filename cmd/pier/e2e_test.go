package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// pierBin is the pier binary built once for the end-to-end tests, which run
// it as a user would. Under -short it is not built and those tests skip.
var pierBin string

// TestMain builds the binary (not under -short) and fails the run if a
// goroutine of the in-process tests outlives them.
func TestMain(m *testing.M) {
	flag.Parse()
	dir := ""
	if !testing.Short() {
		var err error
		dir, err = os.MkdirTemp("", "pier-e2e")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		pierBin = filepath.Join(dir, "pier")
		out, err := exec.Command("go", "build", "-o", pierBin, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building pier: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if dir != "" {
		os.RemoveAll(dir)
	}
	if code == 0 {
		// fasthttp's worker pool cleaner (the proxy's server) sleeps out
		// its idle duration, up to 10s, before it sees the pool stopped:
		// a library goroutine that ends by itself.
		// hashicorp/raft's transport leaves its handler of a peer's pooled
		// connection reading after a group stops, and Node.wait's reader
		// of a VerifyLeader queued at shutdown (a ?consistent read, as
		// pier lock's watch makes) is a known leak of registry/raft; its
		// TestMain explains both.
		if err := goleak.Find(goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
			goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
			goleak.IgnoreAnyFunction("github.com/pier-dev/pier/registry/raft.(*Node).wait.func1")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// needBinary skips an end-to-end test, which runs the built binary, under
// -short.
func needBinary(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test of the built pier binary; skipped under -short")
	}
}

// proc is a running pier agent.
type proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	addr   string // host:port of the HTTP API
	gossip string // host:port that other agents join
	wan    string // host:port of a server's WAN pool
	dns    string // host:port of the DNS interface, UDP and TCP
	mu     sync.Mutex
	log    bytes.Buffer
	done   chan error    // the exit error, once
	exited chan struct{} // closed when the process has exited
}

var httpLine = regexp.MustCompile(`msg="pier agent running".* http=([0-9.:]+)`)

// soloServer makes an agent the one server of its cluster (on any free
// server port): the KV, sessions and ACL objects need one.
var soloServer = []string{"-server", "-bootstrap-expect", "1", "-server-port", "0"}

// startAgent runs `pier agent args...` with the HTTP API on a free port and
// waits until it says it is running.
func startAgent(t testing.TB, args ...string) *proc {
	t.Helper()
	return startAgentIn(t, nil, args...)
}

var (
	gossipLine = regexp.MustCompile(` gossip=([0-9.:]+)`)
	wanLine    = regexp.MustCompile(` wan=([0-9.:]+)`)
)

// startAgentIn runs the agent under a command prefix (such as ip netns exec).
func startAgentIn(t testing.TB, prefix []string, args ...string) *proc {
	t.Helper()
	needBinary(t)
	p := &proc{t: t, done: make(chan error, 1), exited: make(chan struct{})}
	argv := append(append(append([]string{}, prefix...), pierBin, "agent", "-http-port", "0", "-serf-lan-port", "0", "-serf-wan-port", "0", "-dns-port", "0"), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if m := httpLine.FindStringSubmatch(line); m != nil {
				if g := gossipLine.FindStringSubmatch(line); g != nil {
					p.gossip = g[1]
				}
				if g := wanLine.FindStringSubmatch(line); g != nil {
					p.wan = g[1]
				}
				if d := dnsLine.FindStringSubmatch(line); d != nil {
					p.dns = d[1]
				}
				addrc <- m[1]
			}
		}
		err := p.cmd.Wait()
		close(p.exited)
		p.done <- err
		close(addrc)
	}()
	t.Cleanup(func() { p.stop(syscall.SIGKILL) })
	select {
	case a, ok := <-addrc:
		if !ok {
			t.Fatalf("pier agent exited before it was ready:\n%s", p.logs())
		}
		p.addr = a
	case <-time.After(30 * time.Second):
		t.Fatalf("pier agent did not start in 30s:\n%s", p.logs())
	}
	return p
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// stop signals the agent and returns its exit error (nil for exit code 0).
func (p *proc) stop(sig os.Signal) error {
	// Not cmd.ProcessState: the reading goroutine's Wait writes it.
	select {
	case <-p.exited:
		return nil
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case err := <-p.done:
		return err
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		p.t.Errorf("pier agent did not stop within 20s of %v", sig)
		return <-p.done
	}
}

// curl runs the real curl, as the seed's walkthrough does.
func curl(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "-w", "\n%{http_code}"}, args...)...).Output()
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	var code int
	fmt.Sscan(s[i+1:], &code)
	return code, s[:max(i, 0)]
}

// pier runs a pier subcommand against the agent at addr.
func pier(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	needBinary(t)
	cmd := exec.Command(pierBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func requireCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed (.ci/run installs it)")
	}
}

// TestSeedWalkthrough runs the talk's commands against pier agent -dev.
func TestSeedWalkthrough(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, "-dev", "-node", "helloworld")
	base := "http://" + a.addr

	code, body := curl(t, "-X", "POST", "-d", `{"ID":"redis1","Name":"redis","Tags":["master","v1"],"Address":"172.16.0.2","Port":8000}`, base+"/v1/agent/service/register")
	if code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	code, body = curl(t, base+"/v1/agent/services")
	if code != 200 {
		t.Fatalf("services: %d %s", code, body)
	}
	var svcs map[string]map[string]any
	if err := json.Unmarshal([]byte(body), &svcs); err != nil {
		t.Fatalf("services: %v in %s", err, body)
	}
	r := svcs["redis1"]
	want := map[string]any{"ID": "redis1", "Service": "redis", "Address": "172.16.0.2", "Port": 8000.0}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("redis1.%s = %v, want %v (%s)", k, r[k], v, body)
		}
	}
	if tags, _ := json.Marshal(r["Tags"]); string(tags) != `["master","v1"]` {
		t.Errorf("redis1.Tags = %s", tags)
	}
	if c := svcs["consul"]; c["Service"] != "consul" {
		t.Errorf("the agent does not list itself as service consul: %s", body)
	}

	// The catalog and health views carry the node's name and address.
	code, body = curl(t, "-i", base+"/v1/health/service/redis?passing")
	if code != 200 || !strings.Contains(body, `"Node":"helloworld"`) || !strings.Contains(body, `"CheckID":"serfHealth"`) {
		t.Errorf("health/service: %d %s", code, body)
	}
	if !regexp.MustCompile(`(?i)X-Consul-Index: [1-9]`).MatchString(body) {
		t.Errorf("no X-Consul-Index in %s", body)
	}

	// The CLI against the same agent.
	out, errOut, rc := pier(t, "services", "-http-addr", a.addr)
	if rc != 0 || !regexp.MustCompile(`redis\s+redis1\s+helloworld\s+172\.16\.0\.2:8000\s+passing\s+master,v1`).MatchString(out) {
		t.Errorf("pier services: rc=%d\n%s%s", rc, out, errOut)
	}
	out, errOut, rc = pier(t, "register", "--http-addr", a.addr, "-name", "web", "-port", "80", "-tag", "a", "-tag", "b", "-meta", "region=it")
	if rc != 0 || !strings.Contains(out, "Registered service: web") {
		t.Errorf("pier register: rc=%d\n%s%s", rc, out, errOut)
	}
	out, _, _ = pier(t, "services", "-http-addr", a.addr, "-format=json")
	var list []struct{ Service struct{ ID, Service string } }
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 3 {
		t.Errorf("pier services -format=json: %v, %d instances\n%s", err, len(list), out)
	}
	t.Setenv("CONSUL_HTTP_ADDR", a.addr)
	out, errOut, rc = pier(t, "deregister", "web")
	if rc != 0 || !strings.Contains(out, "Deregistered service: web") {
		t.Errorf("pier deregister: rc=%d\n%s%s", rc, out, errOut)
	}
	_, errOut, rc = pier(t, "deregister", "web")
	if rc != 1 || !strings.Contains(errOut, "404") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("pier deregister of a gone service: rc=%d %q", rc, errOut)
	}
	out, _, rc = pier(t, "members")
	if rc != 0 || !regexp.MustCompile(`helloworld\s+127\.0\.0\.1:\d+\s+alive`).MatchString(out) {
		t.Errorf("pier members: rc=%d\n%s", rc, out)
	}
	out, _, rc = pier(t, "version")
	if rc != 0 || !strings.Contains(out, "agent: pier") || !strings.Contains(out, "helloworld") {
		t.Errorf("pier version: rc=%d\n%s", rc, out)
	}

	// A bad registration is one line naming the field, and changes nothing.
	_, errOut, rc = pier(t, "register", "-name", "bad", "-port", "70000")
	if rc != 1 || !strings.Contains(errOut, "Port") || strings.Count(errOut, "\n") != 1 {
		t.Errorf("pier register -port 70000: rc=%d %q", rc, errOut)
	}
	_, after := curl(t, base+"/v1/agent/services")
	var svcs2 map[string]map[string]any
	json.Unmarshal([]byte(after), &svcs2)
	if len(svcs2) != 2 || svcs2["redis1"] == nil {
		t.Errorf("after a bad registration: %s", after)
	}

	if err := a.stop(syscall.SIGINT); err != nil {
		t.Errorf("SIGINT: agent exited with %v\n%s", err, a.logs())
	}
	if !strings.Contains(a.logs(), "pier agent stopped") {
		t.Errorf("no clean shutdown in the log:\n%s", a.logs())
	}
}

// TestRestartKeepsRegistrations registers through the API, restarts the
// agent on the same data dir, and finds the registration again; then damages
// the state and expects a clear refusal to start.
func TestRestartKeepsRegistrations(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	args := []string{"-node", "web1", "-data-dir", dir, "-bind", "127.0.0.1"}
	a := startAgent(t, args...)
	code, body := curl(t, "-X", "PUT", "-d", `{"ID":"api-1","Name":"api","Port":9000,"Meta":{"version":"2"}}`, "http://"+a.addr+"/v1/agent/service/register")
	if code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: exit %v\n%s", err, a.logs())
	}

	b := startAgent(t, args...)
	_, body = curl(t, "http://"+b.addr+"/v1/catalog/service/api")
	var cs []struct {
		Node, ServiceID, Address string
		ServicePort              int
		ServiceMeta              map[string]string
	}
	if err := json.Unmarshal([]byte(body), &cs); err != nil || len(cs) != 1 {
		t.Fatalf("after restart: %v %s", err, body)
	}
	if c := cs[0]; c.Node != "web1" || c.ServiceID != "api-1" || c.ServicePort != 9000 || c.ServiceMeta["version"] != "2" || c.Address != "127.0.0.1" {
		t.Errorf("after restart: %+v", c)
	}
	b.stop(syscall.SIGTERM)

	files, _ := filepath.Glob(filepath.Join(dir, "services", "*.json"))
	if len(files) != 1 {
		t.Fatalf("state files: %v", files)
	}
	os.WriteFile(files[0], []byte(`{"Service":{"ID":"api-1",`), 0o600)
	cmd := exec.Command(pierBin, append([]string{"agent", "-http-port", "0", "-serf-lan-port", "0"}, args...)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("start on a corrupt state file: %v\n%s", err, out)
	}
	last := strings.TrimSpace(string(out))
	last = last[strings.LastIndexByte(last, '\n')+1:]
	if !strings.Contains(last, files[0]) || !strings.Contains(last, "corrupt") {
		t.Errorf("the error does not name the file: %q", last)
	}
}

// TestConfigFile starts an agent from a YAML config file with services.
func TestConfigFile(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(`
node_name: cfgnode
datacenter: dc2
bind_addr: 127.0.0.1
data_dir: `+filepath.Join(dir, "data")+`
node_meta:
  rack_id: r1
services:
  - name: api
    id: api-1
    port: 9000
    tags: [v1]
    enable_tag_override: true
    meta:
      some_key: x
`), 0o600)
	extra := filepath.Join(dir, "conf.d")
	os.Mkdir(extra, 0o700)
	os.WriteFile(filepath.Join(extra, "10-web.json"), []byte(`{"service":{"Name":"web","Port":80}}`), 0o600)

	a := startAgent(t, "-config-file", cfg, "--config-dir", extra)
	_, body := curl(t, "http://"+a.addr+"/v1/agent/services")
	var svcs map[string]struct {
		Service           string
		Port              int
		Tags              []string
		Meta              map[string]string
		EnableTagOverride bool
		Datacenter        string
	}
	if err := json.Unmarshal([]byte(body), &svcs); err != nil {
		t.Fatal(err, body)
	}
	api := svcs["api-1"]
	if api.Service != "api" || api.Port != 9000 || !api.EnableTagOverride || api.Meta["some_key"] != "x" || api.Datacenter != "dc2" {
		t.Errorf("api-1 from the config file: %+v", api)
	}
	if svcs["web"].Port != 80 {
		t.Errorf("web from the config dir: %s", body)
	}
	_, body = curl(t, "http://"+a.addr+"/v1/catalog/node/cfgnode")
	if !strings.Contains(body, `"rack_id":"r1"`) {
		t.Errorf("node meta: %s", body)
	}
}

// TestAgentBadStart checks that mistakes stop the agent with one readable
// line and the right exit code.
func TestAgentBadStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("node_name: x\ndata_dir: "+dir+"\nbind_addr: 127.0.0.1\nnode_nmae: typo\n"), 0o600)
	badSvc := filepath.Join(dir, "badsvc.yaml")
	os.WriteFile(badSvc, []byte("data_dir: "+dir+"\nbind_addr: 127.0.0.1\nservice: {name: x, port: 99999}\n"), 0o600)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"agent"}, 2, "-data-dir is required"},
		{[]string{"agent", "-dev", "-http-port", "99999"}, 2, "-http-port"},
		{[]string{"agent", "-dev", "-bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"agent", "-config-file", bad}, 1, "unknown key"},
		{[]string{"agent", "-config-file", badSvc}, 1, "Port"},
		{[]string{"agent", "-dev", "-client", "not-an-ip"}, 2, "not an IP address"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"register", "-port", "80"}, 2, "-name is required"},
	}
	for _, c := range cases {
		_, errOut, code := pier(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("pier %v: exit %d, stderr %q; want exit %d and one line with %q", c.args, code, errOut, c.code, c.want)
		}
	}
}

// TestAgentPortInUse: a second agent on a taken port fails with one line.
func TestAgentPortInUse(t *testing.T) {
	a := startAgent(t, "-dev")
	port := a.addr[strings.LastIndexByte(a.addr, ':')+1:]
	cmd := exec.Command(pierBin, "agent", "-dev", "-http-port", port)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "address already in use") {
		t.Errorf("second agent on port %s: %v\n%s", port, err, out)
	}
	io.Discard.Write(out)
}
