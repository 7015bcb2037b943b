package deploy

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/pier-dev/pier/deploy/eventually"
)

// cluster is a running deploy/compose.yaml project.
type cluster struct {
	t       *testing.T
	project string
	env     []string
	publish string // 127.0.0.1:port of the frontend's proxy
}

func (c *cluster) compose(args ...string) string {
	c.t.Helper()
	argv := append([]string{"-p", c.project, "-f", "compose.yaml"}, args...)
	cmd := exec.Command(composeBin(), argv...)
	if composeBin() == "docker" {
		cmd = exec.Command("docker", append([]string{"compose"}, argv...)...)
	}
	cmd.Env = append(os.Environ(), c.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// composeBin is docker-compose where it is installed (Debian's package),
// else the compose plugin of the docker CLI.
func composeBin() string {
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return "docker-compose"
	}
	return "docker"
}

// id is the container of a compose service.
func (c *cluster) id(svc string) string {
	c.t.Helper()
	id := c.compose("ps", "-q", svc)
	if id == "" {
		c.t.Fatalf("compose service %s has no container", svc)
	}
	return strings.Fields(id)[0]
}

// ip is a container's address on the project's network; it can change
// when the container starts again.
func (c *cluster) ip(svc string) string {
	c.t.Helper()
	return docker(c.t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c.id(svc))
}

// api GETs a path of an agent's HTTP API into v.
func (c *cluster) api(svc, path string, v any) error {
	cl := http.Client{Timeout: 3 * time.Second}
	resp, err := cl.Get("http://" + net.JoinHostPort(c.ip(svc), "8500") + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

// until polls cond (nothing in the cluster signals the test) until it
// holds, and returns how long it took; cond says what it saw.
func (c *cluster) until(d time.Duration, what string, cond func() (bool, string)) time.Duration {
	c.t.Helper()
	start := time.Now()
	eventually.NoError(c.t, d, what, func() error {
		if ok, seen := cond(); !ok {
			return fmt.Errorf("seen: %s", seen)
		}
		return nil
	})
	return time.Since(start)
}

// memberStatus is a node's status as an agent sees it (1 alive, 3 left, 4 failed).
func (c *cluster) memberStatus(from, node string) int {
	var ms []member
	if err := c.api(from, "/v1/agent/members", &ms); err != nil {
		return -1
	}
	return status(ms, node)
}

// routed is the set of instance addresses the frontend's /api/ route
// balances over.
func (c *cluster) routed() ([]string, error) {
	var routes []struct {
		Path      string
		Instances []struct{ Addr string }
	}
	if err := c.api("frontend", "/v1/pier/routes", &routes); err != nil {
		return nil, err
	}
	var addrs []string
	for _, r := range routes {
		if r.Path == "/api/" {
			for _, in := range r.Instances {
				addrs = append(addrs, in.Addr)
			}
		}
	}
	slices.Sort(addrs)
	return addrs, nil
}

// live is the addresses of the api containers that are running.
func (c *cluster) live(svcs ...string) []string {
	var addrs []string
	for _, s := range svcs {
		addrs = append(addrs, net.JoinHostPort(c.ip(s), "9000"))
	}
	slices.Sort(addrs)
	return addrs
}

// routesTo waits until the frontend balances over exactly want.
func (c *cluster) routesTo(d time.Duration, what string, want []string) time.Duration {
	return c.until(d, what, func() (bool, string) {
		got, err := c.routed()
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(got, want), fmt.Sprintf("routed %v, want %v", got, want)
	})
}

// result is one request of the load.
type result struct {
	at   time.Time
	took time.Duration
	err  string // empty: a 200 from an api instance
}

// load sends GET /api/hello through the frontend from a few clients, each
// paced at one request per 10 ms, and keeps every result.
type load struct {
	mu      sync.Mutex
	results []result
	stop    chan struct{}
	done    sync.WaitGroup
}

func startLoad(url string, clients int, limit time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	end := time.Now().Add(limit) // bounded even if the test forgets to stop it
	for range clients {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			cl := &http.Client{Timeout: 10 * time.Second}
			for n := 0; n < 100000 && time.Now().Before(end); n++ {
				select {
				case <-l.stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				start := time.Now()
				r := result{at: start}
				resp, err := cl.Get(url)
				if err != nil {
					r.err = err.Error()
				} else {
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case err != nil:
						r.err = "reading the body: " + err.Error()
					case resp.StatusCode != 200 || !strings.HasPrefix(string(b), "hello from api"):
						r.err = fmt.Sprintf("%s: %.80q", resp.Status, b)
					}
				}
				r.took = time.Since(start)
				l.mu.Lock()
				l.results = append(l.results, r)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

func (l *load) close() {
	close(l.stop)
	l.done.Wait()
}

// window counts the requests sent in [from, to), their failures (with up
// to three distinct errors and the span from the first to the last) and
// the slowest.
func (l *load) window(from, to time.Time) (n, failed int, slowest, span time.Duration, errs []string) {
	var first, last time.Time
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.results {
		if r.at.Before(from) || !r.at.Before(to) {
			continue
		}
		n++
		slowest = max(slowest, r.took)
		if r.err != "" {
			if failed == 0 {
				first = r.at
			}
			last = r.at
			failed++
			if len(errs) < 3 && !slices.Contains(errs, r.err) {
				errs = append(errs, r.err)
			}
		}
	}
	return n, failed, slowest, last.Sub(first), errs
}

// dnsWatch asks a backend agent's DNS for api.service.consul every 100 ms
// and records every answer that is empty, an error, or not a successful
// lookup: the service has live instances throughout.
type dnsWatch struct {
	mu      sync.Mutex
	asked   int
	bad     []string
	stop    chan struct{}
	stopped chan struct{}
}

func watchDNS(server string, limit time.Duration) *dnsWatch {
	w := &dnsWatch{stop: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(w.stopped)
		cl := &dns.Client{Timeout: 2 * time.Second}
		end := time.Now().Add(limit)
		for time.Now().Before(end) {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			m := new(dns.Msg)
			m.SetQuestion("api.service.consul.", dns.TypeA)
			in, _, err := cl.Exchange(m, server)
			var bad string
			switch {
			case err != nil:
				bad = err.Error()
			case in.Rcode != dns.RcodeSuccess:
				bad = dns.RcodeToString[in.Rcode]
			case len(in.Answer) == 0:
				bad = "no answer"
			}
			w.mu.Lock()
			w.asked++
			if bad != "" {
				w.bad = append(w.bad, time.Now().Format("15:04:05.000")+" "+bad)
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// answer is what the DNS server names for api.service.consul now.
func answer(server string) []string {
	m := new(dns.Msg)
	m.SetQuestion("api.service.consul.", dns.TypeA)
	in, err := dns.Exchange(m, server)
	if err != nil {
		return []string{err.Error()}
	}
	var ips []string
	for _, rr := range in.Answer {
		if a, ok := rr.(*dns.A); ok {
			ips = append(ips, net.JoinHostPort(a.A.String(), "9000"))
		}
	}
	slices.Sort(ips)
	return ips
}

// netCut takes a container's network interface down from inside its own
// network namespace, as a pulled cable would; the container keeps its
// address, so after the heal it is the same node at the same place.
func netCut(t *testing.T, id string, up bool) {
	t.Helper()
	pid := docker(t, "inspect", "-f", "{{.State.Pid}}", id)
	state := "down"
	if up {
		state = "up"
	}
	if out, err := exec.Command("nsenter", "-t", pid, "-n", "ip", "link", "set", "eth0", state).CombinedOutput(); err != nil {
		t.Fatalf("ip link set eth0 %s in %s: %v %s", state, id, err, out)
	}
}

// TestComposeCluster runs deploy/compose.yaml (three backend nodes, each an
// agent registering its own api container from Docker events, and a
// frontend agent routing /api/ to api) under constant HTTP load through
// the frontend, and takes it through the failures production brings:
// a rolling deploy, a backend node crash, a partition, a frontend restart,
// while DNS on a backend node keeps answering api.service.consul.
func TestComposeCluster(t *testing.T) {
	requireDocker(t)
	if exec.Command(composeBin(), "version").Run() != nil && exec.Command("docker", "compose", "version").Run() != nil {
		if os.Getenv("PIER_REQUIRE_DOCKER") == "1" {
			t.Fatal("neither docker-compose nor the docker compose plugin is installed (PIER_REQUIRE_DOCKER=1)")
		}
		t.Skip("neither docker-compose nor the docker compose plugin is installed")
	}
	if _, err := exec.LookPath("nsenter"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("PIER_REQUIRE_DOCKER") == "1" {
			t.Fatal("the partition needs nsenter and root (PIER_REQUIRE_DOCKER=1)")
		}
		t.Skip("the partition needs nsenter and root")
	}
	image := buildImage(t)
	ts := fmt.Sprintf("pier-testserver-test:%d", os.Getpid())
	if out, err := exec.Command("./build-testserver.sh", ts).CombinedOutput(); err != nil {
		t.Fatalf("build-testserver.sh: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", ts).Run() })

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	publish := ln.Addr().String()
	ln.Close()
	c := &cluster{t: t, project: fmt.Sprintf("piere2e%d", os.Getpid()), publish: publish,
		env: []string{"PIER_IMAGE=" + image, "PIER_TESTSERVER_IMAGE=" + ts, "PIER_PROXY_PUBLISH=" + publish}}
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range []string{"frontend", "backend1", "backend2", "backend3"} {
				out, _ := exec.Command(composeBin(), "-p", c.project, "-f", "compose.yaml", "logs", "--tail", "30", s).CombinedOutput()
				t.Logf("logs of %s:\n%s", s, out)
			}
		}
		cmd := exec.Command(composeBin(), "-p", c.project, "-f", "compose.yaml", "down", "-v", "-t", "2")
		cmd.Env = append(os.Environ(), c.env...)
		cmd.Run()
	})
	c.compose("up", "-d")

	apis := []string{"api1", "api2", "api3"}
	took := c.routesTo(60*time.Second, "the cluster up, the frontend routing /api/ to three instances", c.live(apis...))
	t.Logf("cluster up: the frontend routes to all three api instances %v after compose up", took.Round(100*time.Millisecond))

	l := startLoad("http://"+publish+"/api/hello", 4, 5*time.Minute)
	defer l.close()
	dnsServer := net.JoinHostPort(c.ip("backend1"), "8600")
	dw := watchDNS(dnsServer, 5*time.Minute)
	defer func() {
		close(dw.stop)
		<-dw.stopped
	}()
	time.Sleep(time.Second)
	if n, failed, _, _, errs := l.window(time.Time{}, time.Now()); n == 0 || failed > 0 {
		t.Fatalf("before any failure: %d of %d requests failed: %v", failed, n, errs)
	}

	type figure struct {
		scenario               string
		requests, failed       int
		span, slowest, recover time.Duration
	}
	var figures []figure
	report := func(name string, from time.Time, recovered time.Duration) figure {
		n, failed, slowest, span, errs := l.window(from, time.Now())
		t.Logf("%s: %d requests, %d failed (within %v), slowest %v, time %v; errors: %v",
			name, n, failed, span.Round(time.Millisecond), slowest.Round(time.Millisecond), recovered.Round(100*time.Millisecond), errs)
		f := figure{name, n, failed, span, slowest, recovered}
		figures = append(figures, f)
		return f
	}

	// 1. Rolling deploy: each api container replaced in turn, stopped with
	// its stop signal (compose stops, removes, then starts a new one).
	start := time.Now()
	var rollTook time.Duration
	for _, s := range apis {
		old := c.id(s)
		t0 := time.Now()
		c.compose("up", "-d", "--no-deps", "--force-recreate", s)
		if c.id(s) == old {
			t.Fatalf("%s was not replaced", s)
		}
		c.routesTo(30*time.Second, "the new "+s+" in the pool", c.live(apis...))
		rollTook = max(rollTook, time.Since(t0))
	}
	if f := report("rolling deploy (time: the slowest replacement, stop to routed)", start, rollTook); f.failed != 0 {
		t.Errorf("rolling deploy: %d of %d requests failed, want 0", f.failed, f.requests)
	}

	// 2. A backend node crashes: its agent and its container killed.
	start = time.Now()
	docker(t, "kill", c.id("backend2"), c.id("api2"))
	seen := c.until(60*time.Second, "backend2 failed on every other node", func() (bool, string) {
		f, b1, b3 := c.memberStatus("frontend", "backend2"), c.memberStatus("backend1", "backend2"), c.memberStatus("backend3", "backend2")
		return f == 4 && b1 == 4 && b3 == 4, fmt.Sprintf("status on frontend %d, on backend1 %d, on backend3 %d", f, b1, b3)
	})
	c.routesTo(20*time.Second, "api2 out of the pool", c.live("api1", "api3"))
	report("backend node crash (time: kill to failed on every node)", start, seen)
	start = time.Now()
	docker(t, "start", c.id("backend2"), c.id("api2"))
	back := c.routesTo(60*time.Second, "backend2 back with api2", c.live(apis...))
	report("crashed node started again (time: to routed)", start, back)

	// 3. Partition: backend3 and its container cut off the network. Traffic
	// goes on to the others; after the heal the catalog converges.
	start = time.Now()
	netCut(t, c.id("backend3"), false)
	netCut(t, c.id("api3"), false)
	c.until(60*time.Second, "backend3 failed on the frontend", func() (bool, string) {
		s := c.memberStatus("frontend", "backend3")
		return s == 4, fmt.Sprintf("status %d", s)
	})
	c.routesTo(20*time.Second, "api3 out of the pool", c.live("api1", "api2"))
	report("partition (time: cut to out of the pool)", start, time.Since(start))
	start = time.Now()
	netCut(t, c.id("backend3"), true)
	netCut(t, c.id("api3"), true)
	healed := c.routesTo(90*time.Second, "backend3 and api3 back after the heal", c.live(apis...))
	c.until(10*time.Second, "backend3 alive everywhere", func() (bool, string) {
		f, b := c.memberStatus("frontend", "backend3"), c.memberStatus("backend1", "backend3")
		return f == 1 && b == 1, fmt.Sprintf("status on frontend %d, on backend1 %d", f, b)
	})
	report("partition healed (time: to routed again)", start, healed)

	// 4. The frontend agent restarts (SIGTERM, then started again): it
	// rejoins and serves the whole table. The front door is down while it
	// restarts; those failures are counted, not forbidden.
	start = time.Now()
	docker(t, "restart", "-t", "10", c.id("frontend"))
	back = c.routesTo(30*time.Second, "the restarted frontend routing to all three", c.live(apis...))
	c.until(15*time.Second, "requests through the restarted frontend", func() (bool, string) {
		n, failed, _, _, errs := l.window(time.Now().Add(-time.Second), time.Now())
		return n > 10 && failed == 0, fmt.Sprintf("last second: %d of %d failed %v", failed, n, errs)
	})
	report("frontend restart (time: to the full table)", start, back)

	// 5. DNS on backend1 answered throughout, and names the live instances.
	if got, want := answer(dnsServer), c.live(apis...); !slices.Equal(got, want) {
		t.Errorf("backend1's DNS answers %v for api.service.consul, want the live %v", got, want)
	}
	dw.mu.Lock()
	t.Logf("DNS on backend1: %d queries for api.service.consul, %d without a live instance", dw.asked, len(dw.bad))
	if len(dw.bad) > 0 {
		t.Errorf("backend1's DNS failed %d of %d times: %v", len(dw.bad), dw.asked, dw.bad[:min(5, len(dw.bad))])
	}
	dw.mu.Unlock()

	var b strings.Builder
	b.WriteString("| scenario | requests | failed (within) | slowest | time |\n|---|---|---|---|---|\n")
	for _, f := range figures {
		fmt.Fprintf(&b, "| %s | %d | %d (%v) | %v | %v |\n", f.scenario, f.requests, f.failed, f.span.Round(time.Millisecond),
			f.slowest.Round(time.Millisecond), f.recover.Round(100*time.Millisecond))
	}
	t.Logf("figures:\n%s", b.String())
}
