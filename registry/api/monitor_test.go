package api_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry/api"
)

// startMonitored runs an agent whose log goes through a LogStream; the
// agent's own log (at info) lands in the returned buffer.
func startMonitored(t *testing.T) (*agent, *slog.Logger, *syncBuffer) {
	t.Helper()
	own := &syncBuffer{}
	ls := api.NewLogStream(slog.NewTextHandler(own, &slog.HandlerOptions{Level: slog.LevelInfo}))
	log := slog.New(ls)
	a := startAPIAgent(t, func(c *api.Config) {
		c.Logs = ls
		c.Logger = log.With("component", "api")
	})
	return a, log, own
}

// waitLine reads lines until one contains every part, or fails the test.
func waitLine(t *testing.T, ch <-chan string, parts ...string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-ch:
			if !ok {
				t.Fatalf("monitor ended before a line with %q", parts)
			}
			all := true
			for _, p := range parts {
				all = all && strings.Contains(l, p)
			}
			if all {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %q within 10s", parts)
		}
	}
}

func TestAgentMonitor(t *testing.T) {
	a, log, own := startMonitored(t)
	stop := make(chan struct{})
	defer close(stop)
	lines, err := a.client.Agent().Monitor("debug", stop, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.client.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "web1", Name: "web", Port: 80}); err != nil {
		t.Fatal(err)
	}
	// The API's own log line, with the attributes its logger was made with.
	waitLine(t, lines, "service registered", "component=api", "id=web1")
	// A debug line reaches a debug reader, but not the agent's log at info.
	log.WithGroup("g").With("k", "v").Debug("only-for-the-monitor", "n", 1)
	waitLine(t, lines, "level=DEBUG", "only-for-the-monitor", "g.k=v", "g.n=1")
	if strings.Contains(own.String(), "only-for-the-monitor") {
		t.Error("a monitor at debug turned on debug lines in the agent's own log")
	}

	jstop := make(chan struct{})
	defer close(jstop)
	jlines, err := a.client.Agent().MonitorJSON("warn", jstop, nil)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("info-not-for-warn")
	log.Warn("json-warning", "k", "v")
	l := waitLine(t, jlines, "json-warning")
	var rec map[string]any
	if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["msg"] != "json-warning" || rec["level"] != "WARN" || rec["k"] != "v" {
		t.Errorf("logjson line %q: %v, %v", l, rec, err)
	}
	if strings.Contains(l, "info-not-for-warn") {
		t.Error("a warn reader got an info line")
	}
}

func TestAgentMonitorBadLevel(t *testing.T) {
	a, _, _ := startMonitored(t)
	resp, err := http.Get(a.base + "/v1/agent/monitor?loglevel=loud")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b := make([]byte, 200)
	n, _ := resp.Body.Read(b)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b[:n]), "Unknown log level: loud") {
		t.Errorf("bad level: %d %q, want 400 Unknown log level: loud", resp.StatusCode, b[:n])
	}
}

// A reader that does not read must not hold up the agent: its lines are
// dropped, and the agent's log says so.
func TestAgentMonitorSlowReaderDrops(t *testing.T) {
	a, log, own := startMonitored(t)
	conn, err := net.Dial("tcp", strings.TrimPrefix(a.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).SetReadBuffer(4096)
	if _, err := conn.Write([]byte("GET /v1/agent/monitor?loglevel=info HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 12)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(hdr); err != nil || string(hdr) != "HTTP/1.1 200" {
		t.Fatalf("monitor answer %q, %v", hdr, err)
	}
	// Many more bytes than socket buffers and the reader's queue hold.
	// A logger held up by the reader would never finish: the reader reads
	// nothing until the flood is over. How long the flood takes depends on
	// the machine's load (24s seen under -race with a load of 25), so the
	// bound only tells a hold-up from slowness.
	pad := strings.Repeat("x", 2048)
	logged := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		for i := range 20000 {
			log.Info("flood", "i", i, "pad", pad)
		}
		logged <- time.Since(start)
	}()
	select {
	case d := <-logged:
		t.Logf("20000 lines logged in %v with a stuck monitor reader", d)
	case <-time.After(3 * time.Minute):
		t.Fatal("logging is held up by a monitor reader that does not read")
	}
	conn.Close()
	eventually.True(t, 15*time.Second, "the agent's log says that lines were dropped", func() bool {
		return strings.Contains(own.String(), "monitor: a slow reader missed log lines")
	})
}

// What the tee costs the agent's logging: without a reader, one atomic
// load more than the plain handler; with one, formatting the line again.
func BenchmarkLogStream(b *testing.B) {
	plain := slog.New(slog.NewTextHandler(io.Discard, nil)).With("component", "api")
	ls := api.NewLogStream(slog.NewTextHandler(io.Discard, nil))
	teed := slog.New(ls).With("component", "api")
	b.Run("plain", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			plain.Info("service registered", "id", "web1", "name", "web")
		}
	})
	b.Run("stream-no-reader", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			teed.Info("service registered", "id", "web1", "name", "web")
		}
	})
}
