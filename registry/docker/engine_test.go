package docker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pier-dev/pier/health"
	"github.com/pier-dev/pier/registry"
)

// The tests in this file run real containers on the machine's Docker engine.
// Without one they skip, unless PIER_REQUIRE_DOCKER=1 (as .ci/run sets).

var testImage struct {
	once sync.Once
	tag  string
	err  error
}

// TestMain removes the test image and fails the run if a goroutine outlives
// the tests: every Watcher has been stopped and waited for by then.
func TestMain(m *testing.M) {
	code := m.Run()
	if testImage.tag != "" {
		exec.Command("docker", "rmi", "-f", testImage.tag).Run()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func endpoint() string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return h
	}
	return DefaultConfig().Endpoint
}

// requireDocker skips the test without a Docker engine and its CLI, or
// fails it when PIER_REQUIRE_DOCKER=1, and returns the test image's tag.
func requireDocker(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs containers on the Docker engine; skipped under -short")
	}
	skip := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("PIER_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s (PIER_REQUIRE_DOCKER=1)", msg)
		}
		t.Skipf("%s; set PIER_REQUIRE_DOCKER=1 to fail instead", msg)
	}
	if _, err := exec.LookPath("docker"); err != nil {
		skip("no docker CLI")
	}
	e, err := newEngine(endpoint(), 5*time.Second)
	if err != nil {
		skip("docker endpoint: %v", err)
	}
	defer e.hc.CloseIdleConnections()
	if err := e.ping(context.Background()); err != nil {
		skip("no Docker engine answers at %s: %v", endpoint(), err)
	}
	testImage.once.Do(func() { testImage.tag, testImage.err = buildImage() })
	if testImage.err != nil {
		t.Fatalf("building the test image: %v", testImage.err)
	}
	return testImage.tag
}

// buildImage builds deploy/testserver statically and an image FROM scratch
// with it: there is no registry to pull from.
func buildImage() (string, error) {
	dir, err := os.MkdirTemp("", "pier-docker-image")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	_, file, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(file), "..", "..", "deploy", "testserver")
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "testserver"), src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	df := "FROM scratch\nCOPY testserver /testserver\nENTRYPOINT [\"/testserver\"]\nCMD [\"-addr\", \":8080\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		return "", err
	}
	tag := "pier-test-" + unique() + ":latest"
	if out, err := exec.Command("docker", "build", "-q", "-t", tag, dir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("docker build: %v\n%s", err, out)
	}
	return tag, nil
}

func unique() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command("docker", args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// run starts a container named pier-test-<unique> and removes it at the
// end of the test; args go before the image.
func run(t *testing.T, image string, args ...string) (name string) {
	t.Helper()
	name = "pier-test-" + unique()
	argv := append(append([]string{"run", "-d", "--name", name}, args...), image)
	docker(t, argv...)
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })
	return name
}

// hostPort is where the engine published a container's port.
func hostPort(t *testing.T, name string, p int) int {
	t.Helper()
	out := docker(t, "inspect", "-f", fmt.Sprintf(`{{(index (index .NetworkSettings.Ports "%d/tcp") 0).HostPort}}`, p), name)
	n, err := strconv.Atoi(out)
	if err != nil {
		t.Fatalf("published port of %s: %q", name, out)
	}
	return n
}

func newCatalog(t *testing.T) *registry.Registry {
	t.Helper()
	cfg := registry.DefaultConfig()
	cfg.NodeName, cfg.Address = "node1", "127.0.0.1"
	reg, err := registry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// startWatcher runs a watcher on reg (and the health checks of reg) until
// the returned stop is called or the test ends.
func startWatcher(t *testing.T, reg *registry.Registry, mod func(*Config)) (stop func()) {
	t.Helper()
	return startWatcherChecks(t, reg, mod, nil)
}

// startWatcherChecks is startWatcher with the health runner's config
// changed by hmod.
func startWatcherChecks(t *testing.T, reg *registry.Registry, mod func(*Config), hmod func(*health.Config)) (stop func()) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Catalog, cfg.Endpoint, cfg.Address, cfg.Hostname = reg, endpoint(), "127.0.0.1", "testhost"
	if mod != nil {
		mod(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hc := health.DefaultConfig()
	hc.Catalog = reg
	if hmod != nil {
		hmod(&hc)
	}
	checks, err := health.New(hc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- w.Run(ctx) }()
	go func() { done <- checks.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			for range 2 {
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("Run: %v", err)
					}
				case <-time.After(10 * time.Second):
					t.Errorf("Run did not return within 10s of cancel")
				}
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor waits on the catalog's Changed channel until cond holds.
func waitFor(t *testing.T, reg *registry.Registry, within time.Duration, what string, cond func(*registry.Snapshot) bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		snap := reg.Snapshot()
		if cond(snap) {
			return time.Since(start)
		}
		select {
		case <-snap.Changed():
		case <-deadline.C:
			t.Fatalf("%s: not within %v; services: %v", what, within, serviceIDs(reg))
		}
	}
}

func serviceIDs(reg *registry.Registry) []string {
	var ids []string
	for _, s := range reg.Snapshot().NodeServices("node1") {
		ids = append(ids, s.ID)
	}
	return ids
}

func service(snap *registry.Snapshot, id string) (*registry.ServiceEntry, bool) {
	return snap.NodeService("node1", id)
}

func has(id string) func(*registry.Snapshot) bool {
	return func(s *registry.Snapshot) bool { _, ok := service(s, id); return ok }
}

func gone(id string) func(*registry.Snapshot) bool {
	return func(s *registry.Snapshot) bool { _, ok := service(s, id); return !ok }
}

// eventBudget is how long a registration or deregistration may take after
// the docker command that caused it returned.
const eventBudget = 2 * time.Second

// TestEngineLifecycle runs containers and stops, kills and removes them:
// registered within 2 s of start with Registrator's conventions, its HTTP
// check passing, and gone within 2 s of each way of ending it.
func TestEngineLifecycle(t *testing.T) {
	image := requireDocker(t)
	reg := newCatalog(t)
	startWatcher(t, reg, nil)
	svc := "web-" + unique()
	env := []string{"-e", "SERVICE_NAME=" + svc, "-e", "SERVICE_TAGS=v1, blue", "-e", "SERVICE_REGION=it",
		"-e", "SERVICE_CHECK_HTTP=/health", "-e", "SERVICE_CHECK_INTERVAL=1s"}

	for _, end := range []string{"stop", "kill", "rm"} {
		t.Run(end, func(t *testing.T) {
			name := run(t, image, append([]string{"-p", "127.0.0.1::8080"}, env...)...)
			id := "testhost:" + name + ":8080"
			took := waitFor(t, reg, eventBudget, "registered after docker run", has(id))
			t.Logf("registered %v after docker run returned", took)
			e, _ := service(reg.Snapshot(), id)
			if e.Name != svc || e.Address != "127.0.0.1" || e.Port != hostPort(t, name, 8080) ||
				strings.Join(e.Tags, ",") != "v1,blue" || e.Meta["region"] != "it" || len(e.Meta) != 1 {
				t.Errorf("registered %+v", e.Service)
			}
			if src, _ := reg.LocalSource(id); src != registry.SourceDocker {
				t.Errorf("source %q", src)
			}
			took = waitFor(t, reg, 20*time.Second, "HTTP check passing", func(s *registry.Snapshot) bool {
				for _, in := range s.ServiceInstances(svc) {
					if in.Service.ID == id && len(in.Checks) == 2 && in.Status() == registry.StatusPassing {
						return true
					}
				}
				return false
			})
			t.Logf("check passing %v later", took)
			start := time.Now()
			switch end {
			case "stop":
				docker(t, "stop", name)
			case "kill":
				docker(t, "kill", name)
			case "rm":
				docker(t, "rm", "-f", name)
			}
			waitFor(t, reg, eventBudget, "deregistered after docker "+end, gone(id))
			t.Logf("deregistered %v after docker %s was run", time.Since(start), end)
		})
	}
}

// TestEngineGracefulStop: docker stop sends the container's stop signal and
// waits before killing it; the instance leaves the catalog at that signal,
// while the process still runs. A signal that is not a stop signal changes
// nothing.
func TestEngineGracefulStop(t *testing.T) {
	image := requireDocker(t)
	reg := newCatalog(t)
	startWatcher(t, reg, nil)
	// The test server ignores SIGWINCH and SIGUSR2 (Go's runtime does), so
	// docker stop has to wait its timeout before SIGKILL: the window a
	// graceful shutdown has.
	name := run(t, image, "-p", "127.0.0.1::8080", "--stop-signal", "SIGWINCH", "-e", "SERVICE_NAME=graceful-"+unique())
	id := "testhost:" + name + ":8080"
	waitFor(t, reg, eventBudget, "registered", has(id))
	docker(t, "kill", "-s", "USR2", name) // not a stop signal: nothing happens
	other := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=other-"+unique())
	waitFor(t, reg, eventBudget, "a later container registered", has("testhost:"+other+":8080"))
	if _, ok := service(reg.Snapshot(), id); !ok {
		t.Fatalf("a SIGUSR2 that the container ignores deregistered it")
	}
	stopped := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(stopped)
		exec.Command("docker", "stop", "-t", "4", name).Run()
	}()
	took := waitFor(t, reg, eventBudget, "deregistered at the stop signal", gone(id))
	select {
	case <-stopped:
		t.Fatalf("docker stop returned (%v) before the check: the container did not wait for SIGKILL", time.Since(start))
	default:
	}
	t.Logf("deregistered %v after docker stop began; the container still runs until its SIGKILL", took)
	<-stopped
}

// TestEngineNaming: several ports, per-port names, labels over the
// environment, pier.service.* labels, SERVICE_IGNORE and a container
// without published ports.
func TestEngineNaming(t *testing.T) {
	image := requireDocker(t)
	reg := newCatalog(t)
	startWatcher(t, reg, nil)
	base := imageName(image)
	multi := run(t, image, "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9090", "-p", "127.0.0.1::5353/udp",
		"-l", "SERVICE_9090_NAME=admin-"+base, "-e", "SERVICE_TAGS=env")
	labels := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=from-env", "-e", "SERVICE_TAGS=env",
		"-l", "SERVICE_TAGS=label", "-l", "pier.service.name=lbl-"+base, "-l", "pier.service.region=eu")
	ignored := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=ignored-"+base, "-e", "SERVICE_IGNORE=true")
	noPorts := run(t, image, "-e", "SERVICE_NAME=noports-"+base)
	// A container started after the others: once it is in, the events
	// of the others have all been applied.
	last := run(t, image, "-p", "127.0.0.1::8080")
	waitFor(t, reg, eventBudget, "the last container", has("testhost:"+last+":8080"))

	want := map[string]struct {
		name, tags string
		port       int
	}{
		"testhost:" + multi + ":8080":     {base + "-8080", "env", hostPort(t, multi, 8080)},
		"testhost:" + multi + ":9090":     {"admin-" + base, "env", hostPort(t, multi, 9090)},
		"testhost:" + multi + ":5353:udp": {base + "-5353", "env,udp", 0},
		"testhost:" + labels + ":8080":    {"lbl-" + base, "label", hostPort(t, labels, 8080)},
		"testhost:" + last + ":8080":      {base, "", hostPort(t, last, 8080)},
	}
	snap := reg.Snapshot()
	for id, w := range want {
		e, ok := service(snap, id)
		if !ok {
			t.Errorf("%s not registered; have %v", id, serviceIDs(reg))
			continue
		}
		if e.Name != w.name || strings.Join(e.Tags, ",") != w.tags || w.port != 0 && e.Port != w.port {
			t.Errorf("%s: name %q tags %q port %d, want %+v", id, e.Name, e.Tags, e.Port, w)
		}
	}
	if e, _ := service(snap, "testhost:"+labels+":8080"); e != nil && (e.Meta["region"] != "eu" || len(e.Meta) != 1) {
		t.Errorf("meta from pier.service.region: %v", e.Meta)
	}
	for _, n := range []string{ignored, noPorts} {
		for _, s := range snap.NodeServices("node1") {
			if strings.Contains(s.ID, n) {
				t.Errorf("registered %s", s.ID)
			}
		}
	}
}

// TestEngineRestart: a watcher started after containers run registers them;
// registrations of a container that went away while no watcher ran are
// removed at its first sync.
func TestEngineRestart(t *testing.T) {
	image := requireDocker(t)
	reg := newCatalog(t)
	early := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=early-"+unique())
	doomed := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=doomed-"+unique())
	stop := startWatcher(t, reg, nil)
	waitFor(t, reg, 5*time.Second, "running containers registered at start", func(s *registry.Snapshot) bool {
		return has("testhost:"+early+":8080")(s) && has("testhost:"+doomed+":8080")(s)
	})
	stop()
	docker(t, "rm", "-f", doomed)
	late := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME=late-"+unique())
	if !has("testhost:" + doomed + ":8080")(reg.Snapshot()) {
		t.Fatal("deregistered while no watcher ran")
	}
	startWatcher(t, reg, nil)
	waitFor(t, reg, 5*time.Second, "first sync after the restart", func(s *registry.Snapshot) bool {
		return has("testhost:"+early+":8080")(s) && has("testhost:"+late+":8080")(s) && gone("testhost:"+doomed+":8080")(s)
	})
}

// TestEngineInternal registers the container's own address and exposed
// port, also of a container that publishes nothing, and probes it there.
func TestEngineInternal(t *testing.T) {
	image := requireDocker(t)
	reg := newCatalog(t)
	startWatcher(t, reg, func(c *Config) { c.Internal = true })
	svc := "internal-" + unique()
	name := run(t, image, "--expose", "8080", "-e", "SERVICE_NAME="+svc, "-e", "SERVICE_CHECK_TCP=true", "-e", "SERVICE_CHECK_INTERVAL=1s")
	id := "testhost:" + name + ":8080"
	waitFor(t, reg, eventBudget, "registered", has(id))
	e, _ := service(reg.Snapshot(), id)
	ip := docker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	if e.Address != ip || e.Port != 8080 {
		t.Errorf("registered %s:%d, want %s:8080", e.Address, e.Port, ip)
	}
	waitFor(t, reg, 20*time.Second, "TCP check on the container's address passing", func(s *registry.Snapshot) bool {
		for _, in := range s.ServiceInstances(svc) {
			if in.Status() == registry.StatusPassing && len(in.Checks) == 2 {
				return true
			}
		}
		return false
	})
}

// TestEngineScriptCheck: SERVICE_CHECK_SCRIPT runs on the agent's host with
// Registrator's $SERVICE_IP and $SERVICE_PORT, and probes the container.
func TestEngineScriptCheck(t *testing.T) {
	image := requireDocker(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed: the script check probes with it")
	}
	reg := newCatalog(t)
	startWatcherChecks(t, reg, nil, func(c *health.Config) { c.EnableScriptChecks = true })
	svc := "script-" + unique()
	name := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME="+svc, "-e", "SERVICE_CHECK_INTERVAL=1s",
		"-e", "SERVICE_CHECK_SCRIPT=curl -sf --max-time 2 http://$SERVICE_IP:$SERVICE_PORT/health")
	id := "testhost:" + name + ":8080"
	waitFor(t, reg, eventBudget, "registered", has(id))
	want := fmt.Sprintf("curl -sf --max-time 2 http://127.0.0.1:%d/health", hostPort(t, name, 8080))
	waitFor(t, reg, 20*time.Second, "script check passing", func(s *registry.Snapshot) bool {
		for _, in := range s.ServiceInstances(svc) {
			for _, c := range in.Checks {
				if c.ServiceID == id && len(c.Definition.Args) == 3 && c.Definition.Args[2] == want && c.Status == registry.StatusPassing {
					return true
				}
			}
		}
		return false
	})
	// A script that fails (curl exits 7 on a closed port) is critical.
	bad := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME="+svc+"-bad", "-e", "SERVICE_CHECK_INTERVAL=1s",
		"-e", "SERVICE_CHECK_SCRIPT=curl -sSf --max-time 2 http://$SERVICE_IP:1/")
	waitFor(t, reg, eventBudget, "registered", has("testhost:"+bad+":8080"))
	waitFor(t, reg, 20*time.Second, "failing script check critical", func(s *registry.Snapshot) bool {
		for _, in := range s.ServiceInstances(svc + "-bad") {
			for _, c := range in.Checks {
				if len(c.Definition.Args) == 3 && c.Status == registry.StatusCritical && c.Output != "" {
					return true
				}
			}
		}
		return false
	})
}

// TestEngineSources: the watcher neither takes over nor removes a service
// registered through the API under a container's ID, and a resync brings
// back a Docker registration deregistered by hand.
func TestEngineSources(t *testing.T) {
	image := requireDocker(t)
	reg := newCatalog(t)
	startWatcher(t, reg, func(c *Config) { c.Resync = 300 * time.Millisecond })
	name := "pier-test-" + unique()
	taken := "testhost:" + name + ":8080"
	if err := reg.RegisterService(registry.Service{ID: taken, Name: "by-api", Port: 1}, nil, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	docker(t, "run", "-d", "--name", name, "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9090", image)
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })
	other := "testhost:" + name + ":9090"
	waitFor(t, reg, eventBudget, "the other port registered", has(other))
	if e, _ := service(reg.Snapshot(), taken); e.Name != "by-api" {
		t.Errorf("the API's service was taken over: %+v", e.Service)
	}
	if err := reg.DeregisterService(other); err != nil {
		t.Fatal(err)
	}
	waitFor(t, reg, 5*time.Second, "re-registered by a resync", has(other))
	docker(t, "rm", "-f", name)
	waitFor(t, reg, eventBudget, "deregistered", gone(other))
	if e, ok := service(reg.Snapshot(), taken); !ok || e.Name != "by-api" {
		t.Errorf("the API's service was removed with the container")
	}
}

// TestEngineLabel: with a label filter the watcher registers only the
// containers that carry it, as each agent of a compose cluster sharing one
// engine must.
func TestEngineLabel(t *testing.T) {
	image := requireDocker(t)
	reg := newCatalog(t)
	node := "n-" + unique()
	startWatcher(t, reg, func(c *Config) { c.Label = "pier.node=" + node })
	svc := "labelled-" + unique()
	other := run(t, image, "-p", "127.0.0.1::8080", "-l", "pier.node=elsewhere", "-e", "SERVICE_NAME="+svc)
	bare := run(t, image, "-p", "127.0.0.1::8080", "-e", "SERVICE_NAME="+svc)
	mine := run(t, image, "-p", "127.0.0.1::8080", "-l", "pier.node="+node, "-e", "SERVICE_NAME="+svc)
	waitFor(t, reg, eventBudget, "the labelled container registered", has("testhost:"+mine+":8080"))
	// Events arrive in order: the two started before were already seen.
	for _, in := range reg.Snapshot().ServiceInstances(svc) {
		if id := in.Service.ID; id != "testhost:"+mine+":8080" {
			t.Errorf("registered %s; only %s carries pier.node=%s (not %s or %s)", id, mine, node, other, bare)
		}
	}
}

func TestLabelFilterValidated(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Catalog, cfg.Address, cfg.Hostname, cfg.Label = newCatalog(t), "127.0.0.1", "h", "=x"
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "label") {
		t.Errorf("New with label %q: %v, want an error naming the label", cfg.Label, err)
	}
}
