package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestReload: `pier reload`, PUT /v1/agent/reload and SIGHUP read the config
// dir again, as Consul's reload does. A service added to a file appears, one
// removed goes, an unchanged check keeps its status, log_level takes effect,
// a broken file changes nothing and says why in one line, and a setting that
// needs a restart is named in the log.
func TestReload(t *testing.T) {
	requireCurl(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "conf")
	os.Mkdir(conf, 0o700)
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(conf, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A proxy section too: an unchanged one must not count as a change.
	const proxy = "proxy: {addr: '127.0.0.1:0', routes: [{path: /api/, service: api, strip: /api}]}\n"
	write("agent.yaml", "node_name: r1\nbind_addr: 127.0.0.1\ndata_dir: "+filepath.Join(dir, "data")+"\nlog_level: info\n"+proxy)
	write("web.json", `{"service": {"id": "web1", "name": "web", "port": 80, "check": {"ttl": "10m"}}}`)
	a := startAgent(t, "-config-dir", conf)
	base := "http://" + a.addr
	status := func(id string) string {
		t.Helper()
		_, body := curl(t, base+"/v1/agent/checks")
		i := strings.Index(body, `"`+id+`"`)
		if i < 0 {
			return "absent"
		}
		j := strings.Index(body[i:], `"Status":"`)
		rest := body[i+j+len(`"Status":"`):]
		return rest[:strings.IndexByte(rest, '"')]
	}
	services := func() string {
		_, body := curl(t, base+"/v1/agent/services")
		return body
	}
	// Passed once: a reload that reset it would leave it critical.
	if code, body := curl(t, "-X", "PUT", base+"/v1/agent/check/pass/service:web1"); code != 200 {
		t.Fatalf("pass web1: %d %s", code, body)
	}

	write("api.yaml", "service:\n  id: api1\n  name: api\n  port: 9000\n  check: {ttl: 1m}\n")
	write("agent.yaml", "node_name: r1\nbind_addr: 127.0.0.1\ndata_dir: "+filepath.Join(dir, "data")+"\nlog_level: debug\n"+proxy)
	out, errOut, rc := pier(t, "reload", "-http-addr", a.addr)
	if rc != 0 || strings.TrimSpace(out) != "Configuration reload triggered" {
		t.Fatalf("pier reload: rc=%d %q %q", rc, out, errOut)
	}
	if s := services(); !strings.Contains(s, `"api1"`) || !strings.Contains(s, `"web1"`) {
		t.Errorf("after adding api.yaml: %s", s)
	}
	if st := status("service:web1"); st != "passing" {
		t.Errorf("web1's unchanged check after the reload: %s, want passing (not reset)", st)
	}
	// log_level: debug took effect: the health runner's debug line for the new check.
	eventually.NoError(t, 10*time.Second, "a debug line after log_level: debug and a reload", func() error {
		if !strings.Contains(a.logs(), `level=DEBUG msg="check started" component=health check=service:api1`) {
			return fmt.Errorf("log:\n%s", a.logs())
		}
		return nil
	})

	if strings.Contains(a.logs(), "take effect at the next start") {
		t.Errorf("a reload that changed only services and log_level warned of a restart:\n%s", a.logs())
	}

	// A broken file: nothing changes, and the answer says why in one line.
	write("api.yaml", "service:\n  id: api1\n  name: api\n  port: 99999\n")
	out, errOut, rc = pier(t, "reload", "-http-addr", a.addr)
	line := strings.TrimSpace(errOut)
	if rc != 1 || !strings.Contains(line, "api.yaml") || !strings.Contains(line, "Port") || strings.Contains(line, "\n") {
		t.Errorf("reload with a bad port: rc=%d %q %q", rc, out, line)
	}
	if s := services(); !strings.Contains(s, `"api1"`) {
		t.Errorf("a failed reload removed api1: %s", s)
	}

	// Removing the file removes the service; SIGHUP reloads too, and a
	// setting that needs a restart is named in the log.
	os.Remove(filepath.Join(conf, "api.yaml"))
	write("db.json", `{"service": {"id": "db1", "name": "db", "port": 5432}}`)
	write("agent.yaml", "node_name: r1\nbind_addr: 127.0.0.1\ndata_dir: "+filepath.Join(dir, "data")+"\nlog_level: debug\nnode_meta: {rack: a}\n"+proxy)
	a.cmd.Process.Signal(syscall.SIGHUP)
	eventually.NoError(t, 10*time.Second, "api1 gone and db1 there after SIGHUP", func() error {
		if s := services(); strings.Contains(s, `"api1"`) || !strings.Contains(s, `"db1"`) {
			return fmt.Errorf("services %s; log:\n%s", s, a.logs())
		}
		return nil
	})
	if !strings.Contains(a.logs(), "take effect at the next start") {
		t.Errorf("a changed node_meta was not named as needing a restart:\n%s", a.logs())
	}
	if code, body := curl(t, "-X", "PUT", base+"/v1/agent/reload"); code != 200 {
		t.Errorf("PUT /v1/agent/reload: %d %s", code, body)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Errorf("stop after reloads: %v", err)
	}
}
