package main

import (
	"bufio"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pier monitor prints the agent's lines as they happen, at the level asked,
// and exits 0 on an interrupt.
func TestMonitorCommand(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, "-dev")
	cmd := exec.Command(pierBin, "monitor", "-http-addr", a.addr, "-log-level", "debug")
	lines := streamLines(t, cmd)
	// The monitor is subscribed once its request is in; register until a
	// registration shows up (the first may come before the subscription).
	awaitLine(t, lines, "pier monitor", 20*time.Second, 200*time.Millisecond,
		func(l string) bool {
			return strings.Contains(l, "service registered") && strings.Contains(l, "id=mon1")
		},
		func() {
			if code, body := curl(t, "-X", "PUT", "--data", `{"ID":"mon1","Name":"mon","Port":1}`, "http://"+a.addr+"/v1/agent/service/register"); code != 200 {
				t.Fatalf("register: %d %s", code, body)
			}
		})
	cmd.Process.Signal(syscall.SIGINT)
	go func() {
		for range lines {
		}
	}()
	if err := cmd.Wait(); err != nil {
		t.Errorf("pier monitor after SIGINT: %v, want exit 0", err)
	}

	_, stderr, code := pier(t, "monitor", "-http-addr", a.addr, "-log-level", "loud")
	if code != 1 || !strings.Contains(stderr, "Unknown log level: loud") {
		t.Errorf("bad level: exit %d, %q", code, stderr)
	}
}

// streamLines starts cmd and answers the lines of its standard output, the
// channel closed when the output ends; the test's cleanup kills cmd.
func streamLines(t *testing.T, cmd *exec.Cmd) <-chan string {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return lines
}

// awaitLine reads lines until one matches, calling poke every tick until
// then (what it looks for may need doing more than once), and fails the
// test if the stream ends first or after limit. name is the command, for
// failures.
func awaitLine(t *testing.T, lines <-chan string, name string, limit, tick time.Duration, match func(string) bool, poke func()) {
	t.Helper()
	deadline := time.After(limit)
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("%s ended early", name)
			}
			if match(l) {
				return
			}
		case <-tk.C:
			poke()
		case <-deadline:
			t.Fatalf("%s printed no matching line in %v", name, limit)
		}
	}
}
