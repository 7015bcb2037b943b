package main

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// watch follows a Consul blocking query until cond accepts the decoded
// answer or d runs out, the way consul-template would: no sleeps.
func watch[T any](t *testing.T, url string, d time.Duration, cond func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(d)
	index := "0"
	var last T
	for time.Now().Before(deadline) {
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		resp, err := http.Get(url + sep + "index=" + index + "&wait=2s")
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var v T // a 404 (a KV key not there yet) has no body: the zero value
		if len(b) > 0 {
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatalf("GET %s: %v in %s", url, err, b)
			}
		}
		if cond(v) {
			return v
		}
		last = v
		index = resp.Header.Get("X-Consul-Index")
		if index == "" { // not a blocking endpoint: poll
			index = "0"
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Fatalf("GET %s: condition not met within %v; last answer %+v", url, d, last)
	return last
}

type healthEntry struct {
	Node    struct{ Node, Address string }
	Service struct {
		ID   string
		Port int
	}
	Checks []struct{ CheckID, Status string }
}

func serfStatus(e healthEntry) string {
	for _, c := range e.Checks {
		if c.CheckID == "serfHealth" {
			return c.Status
		}
	}
	return ""
}

// TestClusterOfProcesses runs the seed's two-node bootstrap with built
// binaries on loopback: join, register on one node and read on the other,
// then kill -9 a node and see its services go critical on the survivor.
func TestClusterOfProcesses(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, "-node", "helloworld", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	b := startAgent(t, "-node", "helloworld2", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)

	watch(t, "http://"+a.addr+"/v1/catalog/nodes", 10*time.Second, func(ns []struct{ Node string }) bool { return len(ns) == 2 })
	// Each node applies membership events from its own inbox, so b may list
	// a a moment after a's catalog has b: wait for b's own view.
	watch(t, "http://"+b.addr+"/v1/agent/members", 10*time.Second, func(ms []struct{ Name string }) bool { return len(ms) == 2 })
	out, _, rc := pier(t, "members", "-http-addr", b.addr)
	if rc != 0 || !regexp.MustCompile(`helloworld\s+127\.0\.0\.1:\d+\s+alive`).MatchString(out) || !regexp.MustCompile(`helloworld2\s+127\.0\.0\.1:\d+\s+alive`).MatchString(out) {
		t.Errorf("pier members:\n%s", out)
	}

	code, body := curl(t, "-X", "POST", "-d", `{"ID":"redis1","Name":"redis","Port":8000}`, "http://"+b.addr+"/v1/agent/service/register")
	if code != 200 {
		t.Fatalf("register on b: %d %s", code, body)
	}
	got := watch(t, "http://"+a.addr+"/v1/health/service/redis?passing", 10*time.Second, func(es []healthEntry) bool { return len(es) == 1 })
	if got[0].Node.Node != "helloworld2" || got[0].Service.ID != "redis1" || got[0].Service.Port != 8000 {
		t.Errorf("a sees %+v", got[0])
	}

	// A third agent joins through the CLI.
	c := startAgent(t, "-node", "helloworld3", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	out, errOut, rc := pier(t, "join", "-http-addr", c.addr, a.gossip)
	if rc != 0 || !strings.Contains(out, "Successfully joined") {
		t.Fatalf("pier join: rc=%d %s%s", rc, out, errOut)
	}
	watch(t, "http://"+c.addr+"/v1/health/service/redis", 10*time.Second, func(es []healthEntry) bool { return len(es) == 1 })

	// kill -9: no leave, so the others must detect the failure.
	b.cmd.Process.Signal(syscall.SIGKILL)
	for _, p := range []*proc{a, c} {
		got = watch(t, "http://"+p.addr+"/v1/health/service/redis", 30*time.Second, func(es []healthEntry) bool {
			return len(es) == 1 && serfStatus(es[0]) == "critical"
		})
		_, body = curl(t, "http://"+p.addr+"/v1/health/service/redis?passing")
		if strings.TrimSpace(body) != "[]" {
			t.Errorf("?passing still lists the crashed node's service: %s", body)
		}
	}
	out, _, _ = pier(t, "members", "-http-addr", a.addr)
	if !regexp.MustCompile(`helloworld2\s+127\.0\.0\.1:\d+\s+failed`).MatchString(out) {
		t.Errorf("pier members after kill -9:\n%s", out)
	}

	// pier leave: a graceful exit takes the node's services at once.
	curl(t, "-X", "PUT", "-d", `{"Name":"web","Port":80}`, "http://"+c.addr+"/v1/agent/service/register")
	watch(t, "http://"+a.addr+"/v1/catalog/service/web", 10*time.Second, func(es []struct{ Node string }) bool { return len(es) == 1 })
	out, errOut, rc = pier(t, "leave", "-http-addr", c.addr)
	if rc != 0 || !strings.Contains(out, "Graceful leave complete") {
		t.Errorf("pier leave: rc=%d %s%s", rc, out, errOut)
	}
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("agent exited with %v after leave", err)
		}
		c.done <- err
	case <-time.After(20 * time.Second):
		t.Error("agent still running 20s after pier leave")
	}
	watch(t, "http://"+a.addr+"/v1/catalog/service/web", 10*time.Second, func(es []struct{ Node string }) bool { return len(es) == 0 })
	out, _, _ = pier(t, "members", "-http-addr", a.addr)
	if !regexp.MustCompile(`helloworld3\s+127\.0\.0\.1:\d+\s+left`).MatchString(out) {
		t.Errorf("pier members after leave:\n%s", out)
	}
}

// TestEncryptedJoin: agents with the same key form a cluster; one with
// another key cannot join and says why.
func TestEncryptedJoin(t *testing.T) {
	key, _, _ := pier(t, "keygen")
	key = strings.TrimSpace(key)
	a := startAgent(t, "-node", "k1", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-encrypt", key)
	startAgent(t, "-node", "k2", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-encrypt", key, "-join", a.gossip)
	watch(t, "http://"+a.addr+"/v1/catalog/nodes", 10*time.Second, func(ns []struct{ Node string }) bool { return len(ns) == 2 })

	other, _, _ := pier(t, "keygen")
	_, errOut, rc := pier(t, "agent", "-node", "k3", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0",
		"-encrypt", strings.TrimSpace(other), "-join", a.gossip)
	if rc != 1 || !strings.Contains(errOut, "no installed keys could decrypt the message") {
		t.Errorf("a wrong key joined or failed unclearly: rc=%d\n%s", rc, errOut)
	}
	_, errOut, rc = pier(t, "agent", "-dev", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0", "-encrypt", "c2hvcnQ=")
	if rc != 1 || !strings.Contains(errOut, "16, 24 or 32 bytes") {
		t.Errorf("a short key: rc=%d %q", rc, errOut)
	}
}

// TestKeyringRotation rotates the key of a running two-node cluster with
// pier keyring, then a node with only the new key joins.
func TestKeyringRotation(t *testing.T) {
	k1, _, _ := pier(t, "keygen")
	k2, _, _ := pier(t, "keygen")
	k1, k2 = strings.TrimSpace(k1), strings.TrimSpace(k2)
	a := startAgent(t, "-node", "r1", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-encrypt", k1)
	startAgent(t, "-node", "r2", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-encrypt", k1, "-join", a.gossip)
	watch(t, "http://"+a.addr+"/v1/catalog/nodes", 10*time.Second, func(ns []struct{ Node string }) bool { return len(ns) == 2 })
	for _, step := range [][]string{{"-install", k2}, {"-use", k2}, {"-remove", k1}} {
		out, errOut, rc := pier(t, append([]string{"keyring", "-http-addr", a.addr}, step...)...)
		if rc != 0 || !strings.Contains(out, "Success!") {
			t.Fatalf("pier keyring %v: %d %s%s", step, rc, out, errOut)
		}
		if step[0] == "-install" {
			// Installed, not yet used: -list shows both keys,
			// -list-primary (consul keyring's) the old one alone.
			out, errOut, rc := pier(t, "keyring", "-http-addr", a.addr, "-list-primary")
			if want := "dc1 (LAN):\n  " + k1 + " [2/2]\n"; rc != 0 || out != want {
				t.Errorf("pier keyring -list-primary with a key installed: %d %q %s, want %q", rc, out, errOut, want)
			}
			if out, _, _ := pier(t, "keyring", "-http-addr", a.addr, "-list"); !strings.Contains(out, k2+" [2/2]\n") {
				t.Errorf("pier keyring -list with a key installed:\n%s", out)
			}
		}
	}
	if _, errOut, rc := pier(t, "keyring", "-http-addr", a.addr, "-list-primary", "-list"); rc != 2 || !strings.Contains(errOut, "exactly one") {
		t.Errorf("-list-primary with -list: %d %s", rc, errOut)
	}
	out, _, rc := pier(t, "keyring", "-http-addr", a.addr, "-list")
	if rc != 0 || !strings.Contains(out, k2+" [2/2] (primary on 2)") || strings.Contains(out, k1) {
		t.Fatalf("pier keyring -list after the rotation: %d\n%s", rc, out)
	}
	startAgent(t, "-node", "r3", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-encrypt", k2, "-join", a.gossip)
	watch(t, "http://"+a.addr+"/v1/catalog/nodes", 10*time.Second, func(ns []struct{ Node string }) bool { return len(ns) == 3 })
	_, errOut, rc := pier(t, "keyring", "-http-addr", a.addr, "-remove", k2)
	if rc != 1 || !strings.Contains(errOut, "failed") {
		t.Errorf("removing the primary key: %d %q", rc, errOut)
	}
}
