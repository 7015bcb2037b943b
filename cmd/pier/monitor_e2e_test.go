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
	// The monitor is subscribed once its request is in; register until a
	// registration shows up (the first may come before the subscription).
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	seen := false
	for !seen {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("pier monitor ended early")
			}
			seen = strings.Contains(l, "service registered") && strings.Contains(l, "id=mon1")
		case <-tick.C:
			if code, body := curl(t, "-X", "PUT", "--data", `{"ID":"mon1","Name":"mon","Port":1}`, "http://"+a.addr+"/v1/agent/service/register"); code != 200 {
				t.Fatalf("register: %d %s", code, body)
			}
		case <-deadline:
			t.Fatal("pier monitor printed no registration line in 20s")
		}
	}
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
