package main

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// checkerImage builds deploy/testserver (which keeps the container up) and
// registry/docker/testdata/checker (the checked program: exit 0 when /ready
// exists, 1 for /warn, else 2) into an image FROM scratch.
func checkerImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range []struct{ out, src string }{
		{"testserver", "../../deploy/testserver"},
		{"checker", "../../registry/docker/testdata/checker"},
	} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.src)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.src, err, out)
		}
	}
	df := "FROM scratch\nCOPY testserver checker /\nENTRYPOINT [\"/testserver\"]\nCMD [\"-addr\", \":8080\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	tag := "pier-e2e-checker-" + randHex() + ":latest"
	dockerCLI(t, "build", "-q", "-t", tag, dir)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	return tag
}

// waitCheck follows the check with blocking queries until its status is
// want and its output has out, and returns it.
func waitCheck(t *testing.T, c *consul.Client, service, id, want, out string) *consul.HealthCheck {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var idx uint64
	var last *consul.HealthCheck
	for time.Now().Before(deadline) {
		cs, meta, err := c.Health().Checks(service, &consul.QueryOptions{WaitIndex: idx, WaitTime: 10 * time.Second})
		if err != nil {
			t.Fatalf("Health().Checks(%s): %v", service, err)
		}
		idx = meta.LastIndex
		for _, hc := range cs {
			if hc.CheckID == id {
				last = hc
				if hc.Status == want && strings.Contains(hc.Output, out) {
					return hc
				}
			}
		}
	}
	t.Fatalf("check %s never became %s with output %q; last %+v", id, want, out, last)
	return nil
}

// TestDockerCheck: a check with DockerContainerID runs its Args inside the
// container through the engine (the checked program exists only there),
// has type docker, and follows what the program says.
func TestDockerCheck(t *testing.T) {
	requireDockerEngine(t)
	image := checkerImage(t)
	name := "pier-e2e-" + randHex()
	dockerCLI(t, "run", "-d", "--name", name, image)
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })

	reg := &consul.AgentServiceRegistration{Name: "app", Port: 8080, Check: &consul.AgentServiceCheck{
		CheckID: "app-docker", DockerContainerID: name, Args: []string{"/checker"}, Interval: "1s", Timeout: "10s", Shell: "/bin/sh",
	}}
	// As Consul: a docker check is a script check, refused unless enabled.
	off := startAgent(t, "-dev", "-node", "off", "-data-dir", t.TempDir())
	coff, err := consul.NewClient(&consul.Config{Address: off.addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := coff.Agent().ServiceRegister(reg); err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "Check.Args") {
		t.Errorf("docker check without -enable-script-checks: %v, want a 400 naming Check.Args", err)
	}

	a := startAgent(t, "-dev", "-node", "dnode", "-data-dir", t.TempDir(), "-enable-script-checks")
	c, err := consul.NewClient(&consul.Config{Address: a.addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("ServiceRegister: %v", err)
	}
	checks, err := c.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	ac := checks["app-docker"]
	if ac == nil || ac.Type != "docker" {
		t.Fatalf("/v1/agent/checks: %+v, want type docker", ac)
	}
	// consul/api's HealthCheckDefinition has no DockerContainerID: read the JSON.
	resp, err := http.Get("http://" + a.addr + "/v1/agent/checks")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"DockerContainerID":"`+name+`"`) || !strings.Contains(string(body), `"Shell":"/bin/sh"`) {
		t.Errorf("/v1/agent/checks: %s, want DockerContainerID %s and Shell in the definition", body, name)
	}
	hc := waitCheck(t, c, "app", "app-docker", consul.HealthCritical, "neither /ready nor /warn")
	if !strings.Contains(hc.Output, "checker in ") { // its stderr
		t.Errorf("critical output %q", hc.Output)
	}
	dockerCLI(t, "cp", writeEmpty(t), name+":/ready")
	waitCheck(t, c, "app", "app-docker", consul.HealthPassing, "found /ready")
	// The container gone, the check cannot run there: critical (with "no
	// such container", or a timeout if the engine was still removing it).
	dockerCLI(t, "rm", "-f", name)
	waitCheck(t, c, "app", "app-docker", consul.HealthCritical, "container "+name)
}

func writeEmpty(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
