package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireDockerEngine skips without a Docker engine and CLI, or fails with
// PIER_REQUIRE_DOCKER=1 (as .ci/run sets).
func requireDockerEngine(t *testing.T) {
	t.Helper()
	needBinary(t)
	fail := func(msg string) {
		t.Helper()
		if os.Getenv("PIER_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s (PIER_REQUIRE_DOCKER=1)", msg)
		}
		t.Skipf("%s; set PIER_REQUIRE_DOCKER=1 to fail instead", msg)
	}
	if _, err := exec.LookPath("docker"); err != nil {
		fail("no docker CLI")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "version", "-f", "{{.Server.Version}}").CombinedOutput(); err != nil {
		fail(fmt.Sprintf("no Docker engine answers: %v: %s", err, strings.TrimSpace(string(out))))
	}
}

func randHex() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// dockerCLI runs the docker CLI and fails the test if it fails.
func dockerCLI(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// testserverImage builds deploy/testserver statically into an image FROM
// scratch (there is no registry to pull from), removed at the end of t.
func testserverImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "testserver"), "../../deploy/testserver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the test server: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY testserver /testserver\nENTRYPOINT [\"/testserver\"]\n"), 0o644)
	tag := "pier-e2e-" + randHex() + ":latest"
	dockerCLI(t, "build", "-q", "-t", tag, dir)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	return tag
}

// runContainer starts a test server container that answers with its name.
func runContainer(t *testing.T, image string, args ...string) string {
	t.Helper()
	name := "pier-e2e-" + randHex()
	argv := append(append([]string{"run", "-d", "--name", name, "-p", "127.0.0.1::8080"}, args...), image, "-addr", ":8080", "-name", name)
	dockerCLI(t, argv...)
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })
	return name
}

type catalogEntry struct {
	ServiceID, ServiceName, ServiceAddress string
	ServicePort                            int
	ServiceTags                            []string
	ServiceMeta                            map[string]string
}

// waitService follows /v1/health/service/name with blocking queries until
// cond holds for the instances answered, and returns them.
func waitService(t *testing.T, api, name, query string, within time.Duration, cond func([]catalogEntry) bool) []catalogEntry {
	t.Helper()
	deadline := time.Now().Add(within)
	index := "0"
	var last string
	for time.Now().Before(deadline) {
		wait := max(time.Until(deadline), 10*time.Millisecond)
		resp, err := http.Get(fmt.Sprintf("http://%s/v1/health/service/%s?index=%s&wait=%dms%s", api, name, index, wait.Milliseconds(), query))
		if err != nil {
			t.Fatal(err)
		}
		var rows []struct {
			Service struct {
				ID, Service, Address string
				Port                 int
				Tags                 []string
				Meta                 map[string]string
			}
		}
		err = json.NewDecoder(resp.Body).Decode(&rows)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		index = resp.Header.Get("X-Consul-Index")
		var got []catalogEntry
		for _, r := range rows {
			got = append(got, catalogEntry{r.Service.ID, r.Service.Service, r.Service.Address, r.Service.Port, r.Service.Tags, r.Service.Meta})
		}
		if cond(got) {
			return got
		}
		last = fmt.Sprintf("%+v", got)
	}
	t.Fatalf("service %s%s: condition not met within %v; last answer %s", name, query, within, last)
	return nil
}

func count(n int) func([]catalogEntry) bool {
	return func(es []catalogEntry) bool { return len(es) == n }
}

// TestDockerEndToEnd runs the built binary with -docker as the seed runs
// Registrator next to Consul: a container running before the agent starts
// is registered with the seed's SERVICE_* variables, its HTTP check
// passes, the proxy reaches it, a new container is registered and a
// stopped one deregistered within 2 s, and a container removed while the
// agent was down is gone when it starts again.
func TestDockerEndToEnd(t *testing.T) {
	requireCurl(t)
	requireDockerEngine(t)
	image := testserverImage(t)
	svc := "web-" + randHex()
	early := runContainer(t, image, "-e", "SERVICE_NAME="+svc, "-e", "SERVICE_TAGS=master", "-e", "SERVICE_REGION=it",
		"-e", "SERVICE_CHECK_HTTP=/health", "-e", "SERVICE_CHECK_INTERVAL=1s")

	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
docker:
  resync: 1h
proxy:
  addr: 127.0.0.1:0
  routes:
    - path: /web/
      service: %s
      strip: /web
`, svc)), 0o600)
	host, _ := os.Hostname()
	args := []string{"-node", "dock1", "-data-dir", filepath.Join(dir, "data"), "-bind", "127.0.0.1", "-config-file", cfg}
	a := startAgent(t, args...)

	got := waitService(t, a.addr, svc, "&passing", 20*time.Second, count(1))
	want := catalogEntry{ServiceID: host + ":" + early + ":8080", ServiceName: svc, ServiceAddress: "127.0.0.1"}
	if e := got[0]; e.ServiceID != want.ServiceID || e.ServiceName != svc || e.ServiceAddress != "127.0.0.1" || e.ServicePort == 0 ||
		strings.Join(e.ServiceTags, ",") != "master" || e.ServiceMeta["region"] != "it" {
		t.Errorf("registered %+v, want %+v", e, want)
	}
	code, body := curl(t, "http://"+a.proxyAddr()+"/web/x")
	if code != 200 || !strings.Contains(body, "hello from "+early) {
		t.Errorf("through the proxy: %d %q", code, body)
	}

	start := time.Now()
	late := runContainer(t, image, "-e", "SERVICE_NAME="+svc)
	waitService(t, a.addr, svc, "", 2*time.Second-time.Since(start), count(2))
	t.Logf("a new container was in the catalog %v after docker run began", time.Since(start))

	// Maintenance on a container's service survives the agent's restart.
	lateID := host + ":" + late + ":8080"
	if _, errOut, rc := pier(t, "maint", "-http-addr", a.addr, "-enable", "-service", lateID, "-reason", "drain"); rc != 0 {
		t.Fatalf("pier maint: %d %s", rc, errOut)
	}
	if err := a.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, a.logs())
	}
	dockerCLI(t, "rm", "-f", early)
	b := startAgent(t, args...)
	got = waitService(t, b.addr, svc, "", 5*time.Second, count(1))
	if got[0].ServiceID != lateID {
		t.Errorf("after the restart: %+v", got)
	}
	waitService(t, b.addr, svc, "&passing", 5*time.Second, count(0))

	start = time.Now()
	dockerCLI(t, "stop", late)
	waitService(t, b.addr, svc, "", 2*time.Second, count(0))
	t.Logf("gone %v after docker stop began", time.Since(start))
	code, body = curl(t, "http://"+b.proxyAddr()+"/web/x")
	if code != 502 {
		t.Errorf("after the stop, through the proxy: %d %q", code, body)
	}
}
