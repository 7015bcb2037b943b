package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// consulTemplate finds HashiCorp's consul-template binary: on PATH or where
// `go install` puts it (.ci/run installs it there). Without it the test
// skips, unless PIER_REQUIRE_CONSUL_TEMPLATE=1 (as .ci/run sets).
func consulTemplate(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("consul-template"); err == nil {
		return p
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(strings.TrimSpace(string(gopath)), "bin", "consul-template")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	const how = "go install github.com/hashicorp/consul-template@v0.41.1"
	if os.Getenv("PIER_REQUIRE_CONSUL_TEMPLATE") == "1" {
		t.Fatal("no consul-template binary and PIER_REQUIRE_CONSUL_TEMPLATE=1 (" + how + ")")
	}
	t.Skip("no consul-template binary (" + how + ")")
	return ""
}

// TestConsulTemplate runs the real consul-template against a pier agent with
// the talk's nginx upstream template (plus a KV key), as the talk's frontend
// node did: the file follows registrations, health and deregistrations
// through pier's blocking queries, and the command runs after each render.
func TestConsulTemplate(t *testing.T) {
	requireCurl(t)
	bin := consulTemplate(t)
	a := startAgent(t, "-dev", "-node", "front", "-data-dir", t.TempDir())
	dir := t.TempDir()
	tmpl, out, renders := filepath.Join(dir, "upstream.ctmpl"), filepath.Join(dir, "upstream.conf"), filepath.Join(dir, "renders")
	os.WriteFile(tmpl, []byte(`upstream upstream-api {
  least_conn;
  {{range service "api"}}server {{.Address}}:{{.Port}} max_fails=3 fail_timeout=60 weight=1;
  {{else}}server 127.0.0.1:65535; # force a 502{{end}}
}
# db: {{key "config/app/db"}}
`), 0o600)

	reg := func(body string) {
		t.Helper()
		if code, b := curl(t, "-X", "PUT", "-d", body, "http://"+a.addr+"/v1/agent/service/register"); code != 200 {
			t.Fatalf("register %s: %d %s", body, code, b)
		}
	}
	put := func(path, body string) {
		t.Helper()
		if code, b := curl(t, "-X", "PUT", "-d", body, "http://"+a.addr+path); code != 200 {
			t.Fatalf("PUT %s: %d %s", path, code, b)
		}
	}
	// {{key}} waits for its key before the first render, as in Consul.
	put("/v1/kv/config/app/db", "postgres://db:5432")

	var logs lockedBuffer
	ct := exec.Command(bin, "-consul-addr", a.addr, "-log-level", "info",
		"-template", tmpl+":"+out+":sh -c 'echo rendered >> "+renders+"'")
	ct.Stdout, ct.Stderr = &logs, &logs
	if err := ct.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ct.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- ct.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			ct.Process.Kill()
			<-done
			t.Errorf("consul-template did not stop within 10s of SIGINT")
		}
	}()

	// waitFile waits (bounded) until the rendered file satisfies cond.
	waitFile := func(what string, cond func(string) bool) time.Duration {
		t.Helper()
		start := time.Now()
		eventually.NoError(t, 30*time.Second, what, func() error {
			if b, err := os.ReadFile(out); err != nil || !cond(string(b)) {
				return fmt.Errorf("file:\n%s\nconsul-template:\n%s\nagent:\n%s", b, logs.String(), a.logs())
			}
			return nil
		})
		return time.Since(start)
	}
	has := func(s ...string) func(string) bool {
		return func(f string) bool {
			for _, x := range s {
				if !strings.Contains(f, x) {
					return false
				}
			}
			return true
		}
	}
	hasNot := func(s string) func(string) bool { return func(f string) bool { return !strings.Contains(f, s) } }

	waitFile("first render, no instance", has("server 127.0.0.1:65535; # force a 502", "# db: postgres://db:5432"))

	reg(`{"ID":"api-1","Name":"api","Address":"10.0.0.1","Port":9001}`)
	took := waitFile("api-1 rendered", has("server 10.0.0.1:9001 max_fails=3"))
	t.Logf("a registration was in the file %v after curl returned", took)
	if f, _ := os.ReadFile(out); strings.Contains(string(f), "force a 502") {
		t.Errorf("the placeholder stayed beside an instance:\n%s", f)
	}

	// An instance whose check is critical stays out until its TTL passes.
	reg(`{"ID":"api-2","Name":"api","Address":"10.0.0.2","Port":9002,"Check":{"CheckID":"api-2-ttl","TTL":"60s"}}`)
	// A later change: by the time it is rendered, the health watch has been
	// woken by api-2's registration, which must have left the file alone.
	put("/v1/kv/config/app/db", "postgres://db2:5432")
	waitFile("key change rendered", has("# db: postgres://db2:5432"))
	if f, _ := os.ReadFile(out); strings.Contains(string(f), "10.0.0.2") {
		t.Errorf("an instance with a critical check was rendered:\n%s", f)
	}
	put("/v1/agent/check/pass/api-2-ttl", "")
	waitFile("api-2 rendered once passing", has("server 10.0.0.1:9001", "server 10.0.0.2:9002"))

	put("/v1/agent/service/deregister/api-1", "")
	waitFile("api-1 gone", hasNot("10.0.0.1"))
	put("/v1/agent/service/deregister/api-2", "")
	waitFile("empty pool: the placeholder again", has("force a 502"))

	b, _ := os.ReadFile(renders)
	if n := strings.Count(string(b), "rendered"); n < 5 {
		t.Errorf("the command ran %d times for 6 renders", n)
	}
}
