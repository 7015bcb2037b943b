package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

// fakeEngine answers the four calls the watcher makes, from a table of
// containers, and can go down and come back as a restarted engine does.
type fakeEngine struct {
	mu         sync.Mutex
	containers map[string]*container
	down       bool
	refused    int           // calls answered while down
	cut        chan struct{} // closed to end the current event stream
	events     chan string
	listed     chan struct{} // a value per container listing (a sync), if anyone waits
}

func newFakeEngine(t *testing.T) (*fakeEngine, string) {
	f := &fakeEngine{containers: map[string]*container{}, cut: make(chan struct{}), events: make(chan string, 16), listed: make(chan struct{})}
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f, "unix://" + sock
}

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	down, cut := f.down, f.cut
	if down {
		f.refused++
	}
	f.mu.Unlock()
	if down {
		http.Error(w, "engine restarting", http.StatusServiceUnavailable)
		return
	}
	switch p := r.URL.Path; {
	case p == "/_ping":
		w.Write([]byte("OK"))
	case p == "/containers/json":
		f.mu.Lock()
		var list []map[string]string
		for id, c := range f.containers {
			if c.State.Running {
				list = append(list, map[string]string{"Id": id})
			}
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(list)
		select {
		case f.listed <- struct{}{}:
		default:
		}
	case strings.HasPrefix(p, "/containers/") && strings.HasSuffix(p, "/json"):
		f.mu.Lock()
		c, ok := f.containers[strings.TrimSuffix(strings.TrimPrefix(p, "/containers/"), "/json")]
		var b []byte
		if ok {
			b, _ = json.Marshal(c)
		}
		f.mu.Unlock()
		if !ok {
			http.Error(w, `{"message":"No such container"}`, http.StatusNotFound)
			return
		}
		w.Write(b)
	case p == "/events":
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case e := <-f.events:
				fmt.Fprintln(w, e)
				w.(http.Flusher).Flush()
			case <-cut:
				return
			case <-r.Context().Done():
				return
			}
		}
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeEngine) run(id, svc string, hostPort int) {
	c := ctr(id, "img", []string{"SERVICE_NAME=" + svc}, nil, map[string]string{"80/tcp": fmt.Sprintf("0.0.0.0:%d", hostPort)})
	c.ID = id
	f.mu.Lock()
	f.containers[id] = c
	f.mu.Unlock()
}

func (f *fakeEngine) send(action, id string, attrs map[string]string) {
	b, _ := json.Marshal(map[string]any{"Type": "container", "Action": action, "Actor": map[string]any{"ID": id, "Attributes": attrs}})
	f.events <- string(b)
}

// TestReconnect: the engine restarts (its event stream ends and it refuses
// calls for a while); meanwhile a container went away and another started.
// The watcher reconnects with backoff and its first sync repairs both.
func TestReconnect(t *testing.T) {
	f, ep := newFakeEngine(t)
	f.run("c1", "one", 30001)
	reg := newCatalog(t)
	cfg := DefaultConfig()
	cfg.Catalog, cfg.Endpoint, cfg.Address, cfg.Hostname = reg, ep, "10.0.0.2", "h"
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, 50*time.Millisecond
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()
	waitFor(t, reg, 5*time.Second, "initial sync", has("h:c1:80"))
	e, _ := service(reg.Snapshot(), "h:c1:80")
	if e.Address != "10.0.0.2" || e.Port != 30001 || e.Name != "one" {
		t.Errorf("registered %+v", e.Service)
	}

	// A HUP is not a stop signal; a start after it shows it was read.
	f.send("kill", "c1", map[string]string{"signal": "1"})
	f.run("c2", "two", 30002)
	f.send("start", "c2", nil)
	waitFor(t, reg, 5*time.Second, "started", has("h:c2:80"))
	if !has("h:c1:80")(reg.Snapshot()) {
		t.Fatal("a SIGHUP deregistered c1")
	}

	f.mu.Lock()
	f.down = true
	close(f.cut)
	f.cut = make(chan struct{})
	delete(f.containers, "c1")
	f.refused = 0
	f.mu.Unlock()
	f.run("c3", "three", 30003)
	eventually.True(t, 10*time.Second, "three refused reconnects", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.refused >= 3
	})
	if !has("h:c1:80")(reg.Snapshot()) {
		t.Fatal("deregistered while the engine was down")
	}
	f.mu.Lock()
	f.down = false
	f.mu.Unlock()
	waitFor(t, reg, 5*time.Second, "repaired after the reconnect", func(s *registry.Snapshot) bool {
		return gone("h:c1:80")(s) && has("h:c2:80")(s) && has("h:c3:80")(s)
	})
	// Events flow again on the new stream.
	f.send("die", "c2", map[string]string{"exitCode": "0"})
	waitFor(t, reg, 5*time.Second, "die after the reconnect", gone("h:c2:80"))
}

// TestRunWithoutEngine: Run keeps retrying and returns once ctx ends.
func TestRunWithoutEngine(t *testing.T) {
	reg := newCatalog(t)
	cfg := DefaultConfig()
	cfg.Catalog, cfg.Endpoint, cfg.Address = reg, "unix://"+filepath.Join(t.TempDir(), "none.sock"), "10.0.0.2"
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := w.Run(ctx); err != nil || time.Since(start) > 3*time.Second {
		t.Errorf("Run: %v after %v", err, time.Since(start))
	}
}

func TestNewValidates(t *testing.T) {
	reg := newCatalog(t)
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.Catalog = nil }, "catalog"},
		{func(c *Config) { c.Address = "" }, "address"},
		{func(c *Config) { c.Address = "host.example" }, "not an IP"},
		{func(c *Config) { c.Endpoint = "ssh://x" }, "want unix"},
		{func(c *Config) { c.Endpoint = "unix://" }, "no socket"},
		{func(c *Config) { c.Resync = -1 }, "negative"},
	} {
		cfg := DefaultConfig()
		cfg.Catalog, cfg.Address = reg, "10.0.0.1"
		tc.mod(&cfg)
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New: %v, want %q", err, tc.want)
		}
	}
	cfg := DefaultConfig()
	cfg.Catalog, cfg.Internal, cfg.Endpoint = reg, true, "tcp://127.0.0.1:2375"
	if _, err := New(cfg); err != nil {
		t.Errorf("internal without address over tcp: %v", err)
	}
}

// TestResyncKeepsState: a resync registers an unchanged container again
// without a change: its check keeps its status and the index stays.
func TestResyncKeepsState(t *testing.T) {
	f, ep := newFakeEngine(t)
	f.run("c1", "one", 30001)
	f.containers["c1"].Config.Env = append(f.containers["c1"].Config.Env, "SERVICE_CHECK_TTL=1h")
	reg := newCatalog(t)
	cfg := DefaultConfig()
	cfg.Catalog, cfg.Endpoint, cfg.Address, cfg.Hostname = reg, ep, "10.0.0.2", "h"
	cfg.Resync = 10 * time.Millisecond
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, reg, 5*time.Second, "registered", has("h:c1:80"))
	if err := reg.UpdateCheck("service:h:c1:80", registry.StatusPassing, "ok"); err != nil {
		t.Fatal(err)
	}
	<-f.listed // a sync that may have started before the update
	index := reg.Snapshot().Index()
	for range 3 {
		select {
		case <-f.listed:
		case <-time.After(5 * time.Second):
			t.Fatal("no resync")
		}
	}
	<-f.listed // the third one has finished
	if got := reg.Snapshot().Index(); got != index {
		t.Errorf("index moved from %d to %d over unchanged resyncs", index, got)
	}
	for _, c := range reg.Snapshot().NodeChecks("node1", "h:c1:80") {
		if c.Status != registry.StatusPassing || c.Output != "ok" {
			t.Errorf("check reset by a resync: %s %q", c.Status, c.Output)
		}
	}
}
