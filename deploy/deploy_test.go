// Package deploy holds pier's image, unit and example configs; its tests
// build the image with the real Docker engine and run a cluster of it on a
// network the test makes.
package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// requireDocker skips where no engine answers, unless PIER_REQUIRE_DOCKER=1
// (as .ci/run sets), where that is a failure.
func requireDocker(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("deploy test on the Docker engine; skipped under -short")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		if os.Getenv("PIER_REQUIRE_DOCKER") == "1" {
			t.Fatalf("no Docker engine answers and PIER_REQUIRE_DOCKER=1: %v %s", err, out)
		}
		t.Skipf("no Docker engine answers (%v); set PIER_REQUIRE_DOCKER=1 to make this a failure", err)
	}
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// buildImage runs build-image.sh once per test binary.
func buildImage(t *testing.T) string {
	t.Helper()
	tag := fmt.Sprintf("pier-test:%d", os.Getpid())
	out, err := exec.Command("./build-image.sh", tag).CombinedOutput()
	if err != nil {
		t.Fatalf("build-image.sh: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	return tag
}

type container struct {
	name string
	api  string // 127.0.0.1:port published for the HTTP API
}

func run(t *testing.T, image, network, name string, args ...string) container {
	t.Helper()
	argv := append([]string{"run", "-d", "--name", name, "--network", network, "-p", "127.0.0.1::8500", image}, args...)
	docker(t, argv...)
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })
	port := docker(t, "port", name, "8500/tcp")
	return container{name: name, api: strings.Split(port, "\n")[0]}
}

// get polls an API path of c until cond accepts the JSON answer.
func get[T any](t *testing.T, c container, path string, d time.Duration, cond func(T) bool) T {
	t.Helper()
	var v T
	// Polling: the agent may not be listening yet.
	err := eventually.Within(d, func() error {
		resp, err := http.Get("http://" + c.api + path)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var x T
		if json.Unmarshal(b, &x) != nil || !cond(x) {
			return fmt.Errorf("last answer %s", b)
		}
		v = x
		return nil
	})
	if err != nil {
		logs, _ := exec.Command("docker", "logs", "--tail", "20", c.name).CombinedOutput()
		t.Fatalf("%s%s: condition not met within %v; %v\nlogs:\n%s", c.name, path, d, err, logs)
	}
	return v
}

type member struct {
	Name   string
	Status int
}

func status(ms []member, name string) int {
	for _, m := range ms {
		if m.Name == name {
			return m.Status
		}
	}
	return 0
}

// TestImageCluster builds the image FROM scratch and runs three agents from
// it on a Docker network of the test's own: they join by container name,
// replicate a registration, see a killed agent fail and a stopped one leave.
func TestImageCluster(t *testing.T) {
	requireDocker(t)
	image := buildImage(t)
	if v := docker(t, "run", "--rm", image, "version"); !strings.HasPrefix(v, "pier ") {
		t.Fatalf("pier version in the image: %q", v)
	}
	if u := docker(t, "image", "inspect", "--format", "{{.Config.User}}", image); u != "65532:65532" {
		t.Errorf("image user %q, want the non-root 65532:65532", u)
	}
	network := fmt.Sprintf("pier-test-%d", os.Getpid())
	docker(t, "network", "create", network)
	t.Cleanup(func() { exec.Command("docker", "network", "rm", network).Run() })

	name := func(n string) string { return fmt.Sprintf("pier-%d-%s", os.Getpid(), n) }
	agent := func(n string, join bool) []string {
		args := []string{"agent", "-node", n, "-data-dir", "/data", "-client", "0.0.0.0", "-bind", "0.0.0.0"}
		if join {
			args = append(args, "-retry-join", name("a"))
		}
		return args
	}
	a := run(t, image, network, name("a"), agent("a", false)...)
	b := run(t, image, network, name("b"), agent("b", true)...)
	c := run(t, image, network, name("c"), agent("c", true)...)

	get(t, a, "/v1/agent/members", 60*time.Second, func(ms []member) bool {
		return status(ms, "a") == 1 && status(ms, "b") == 1 && status(ms, "c") == 1
	})
	resp, err := http.DefaultClient.Do(mustReq(t, "PUT", "http://"+b.api+"/v1/agent/service/register", `{"ID":"redis1","Name":"redis","Port":6379}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register on b: %v %v", err, resp)
	}
	resp.Body.Close()
	got := get(t, a, "/v1/catalog/service/redis", 20*time.Second, func(es []struct{ Node, Address string }) bool { return len(es) == 1 })
	if got[0].Node != "b" || !strings.HasPrefix(got[0].Address, "172.") && !strings.HasPrefix(got[0].Address, "10.") && !strings.HasPrefix(got[0].Address, "192.168.") {
		t.Errorf("a sees redis on %+v, want node b at its network address", got[0])
	}

	docker(t, "kill", c.name)
	get(t, a, "/v1/agent/members", 60*time.Second, func(ms []member) bool { return status(ms, "c") == 4 })

	docker(t, "stop", "-t", "20", b.name) // SIGTERM: a graceful leave
	get(t, a, "/v1/agent/members", 30*time.Second, func(ms []member) bool { return status(ms, "b") == 3 })
	get(t, a, "/v1/catalog/service/redis", 10*time.Second, func(es []struct{ Node string }) bool { return len(es) == 0 })
}

func mustReq(t *testing.T, method, url, body string) *http.Request {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestExampleConfigs: the example configs are valid for the agent.
func TestExampleConfigs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the pier binary; skipped under -short")
	}
	bin := t.TempDir() + "/pier"
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/pier").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, f := range []string{"pier-backend.yaml", "pier-frontend.yaml"} {
		out, err := exec.Command(bin, "validate", f).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Configuration is valid!") {
			t.Errorf("pier validate %s: %v\n%s", f, err, out)
		}
	}
}
