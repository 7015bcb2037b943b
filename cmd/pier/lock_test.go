package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// runLocker runs pier lock's body with args against addr, as the
// subcommand would, with sigs standing for the process's signals.
func runLocker(addr string, sigs <-chan os.Signal, args ...string) (code int, stdout, stderr string, err error) {
	var out, errb syncBuffer
	l := &locker{stdout: &out, stderr: &errb, signals: sigs, grace: 2 * time.Second}
	code, err = l.run(append([]string{"-http-addr", addr}, args...))
	return code, out.String(), errb.String(), err
}

// Three pier lock runs on one prefix: each command appends its start and
// end times to a file, and no two of those intervals overlap. The session
// and the lock's key are gone afterwards.
func TestLockMutualExclusion(t *testing.T) {
	s := startRaftServers(t, 1)[0]
	log := filepath.Join(t.TempDir(), "log")
	script := fmt.Sprintf(`echo "start $(date +%%s%%N)" >> %[1]s; sleep 0.3; echo "end $(date +%%s%%N)" >> %[1]s`, log)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, stderr, err := runLocker(s.addr, nil, "-name", fmt.Sprintf("run %d", i), "jobs/nightly", script)
			if err != nil || code != 0 {
				t.Errorf("run %d: code %d, err %v, stderr %q", i, code, err, stderr)
			}
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	type span struct{ start, end int64 }
	var spans []span
	var open int64 = -1
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		what, ts, _ := strings.Cut(line, " ")
		v, err := strconv.ParseInt(ts, 10, 64)
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		switch {
		case what == "start" && open < 0:
			open = v
		case what == "end" && open >= 0:
			spans = append(spans, span{open, v})
			open = -1
		default:
			t.Fatalf("two commands ran at once:\n%s", b)
		}
	}
	if len(spans) != 3 {
		t.Fatalf("%d commands ran, want 3:\n%s", len(spans), b)
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			t.Fatalf("intervals overlap: %v", spans)
		}
	}
	if list, _, err := s.client.Session().List(nil); err != nil || len(list) != 0 {
		t.Fatalf("sessions left: %+v %v", list, err)
	}
	if p, _, err := s.client.KV().Get("jobs/nightly/.lock", nil); err != nil || p != nil {
		t.Fatalf("the lock's key is left: %+v %v", p, err)
	}
}

// A lock lost while the command runs (its session destroyed from outside)
// sends the command SIGTERM; pier lock answers its exit code.
func TestLockLostSignalsChild(t *testing.T) {
	s := startRaftServers(t, 1)[0]
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	script := fmt.Sprintf(`trap 'echo TERM >> %[1]s; exit 7' TERM; echo started >> %[1]s; while :; do sleep 0.1; done`, log)
	type result struct {
		code           int
		stdout, stderr string
		err            error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.code, r.stdout, r.stderr, r.err = runLocker(s.addr, nil, "svc/leader", script)
		done <- r
	}()
	eventually.True(t, 15*time.Second, "the command runs", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "started")
	})
	p, _, err := s.client.KV().Get("svc/leader/.lock", nil)
	if err != nil || p == nil || p.Session == "" {
		t.Fatalf("the lock's key: %+v %v", p, err)
	}
	if _, err := s.client.Session().Destroy(p.Session, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.code != 7 || !strings.Contains(r.stderr, "lost") {
			t.Fatalf("code %d, err %v, stderr %q (want 7 and a line saying the lock was lost)", r.code, r.err, r.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pier lock did not end after its lock was lost")
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "TERM") {
		t.Fatalf("the command did not get SIGTERM: %q", b)
	}
}

// SIGINT to pier lock goes to the command, which decides: here it exits 3.
func TestLockForwardsSignals(t *testing.T) {
	s := startRaftServers(t, 1)[0]
	log := filepath.Join(t.TempDir(), "log")
	script := fmt.Sprintf(`trap 'echo INT >> %[1]s; exit 3' INT; echo started >> %[1]s; while :; do sleep 0.1; done`, log)
	sigs := make(chan os.Signal, 1)
	done := make(chan int, 1)
	go func() {
		code, _, stderr, err := runLocker(s.addr, sigs, "svc/int", script)
		if err != nil {
			t.Errorf("%v %s", err, stderr)
		}
		done <- code
	}()
	eventually.True(t, 15*time.Second, "the command runs", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "started")
	})
	sigs <- syscall.SIGINT
	select {
	case code := <-done:
		if code != 3 {
			t.Fatalf("exit code %d, want the command's 3", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pier lock did not end after SIGINT")
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "INT") {
		t.Fatalf("the command did not get SIGINT: %q", b)
	}
}

// -n 2 is a semaphore in Consul's layout: with both slots held by
// consul/api's SemaphorePrefix users, pier lock -timeout gives up; with
// one freed it runs the command, which sees CONSUL_LOCK_HELD. Usage
// mistakes are usage errors; the command's exit code is pier's.
func TestLockSemaphoreInterop(t *testing.T) {
	s := startRaftServers(t, 1)[0]
	var sems []*consul.Semaphore
	for range 2 {
		sem, err := s.client.SemaphorePrefix("pool", 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sem.Acquire(nil); err != nil {
			t.Fatal(err)
		}
		sems = append(sems, sem)
	}
	if _, _, _, err := runLocker(s.addr, nil, "-n", "2", "-timeout", "1s", "pool", "true"); err == nil || !strings.Contains(err.Error(), "not acquired within 1s") {
		t.Fatalf("with both slots held: %v", err)
	}
	if err := sems[0].Release(); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr, err := runLocker(s.addr, nil, "-n", "2", "pool", "sh", "-c", "echo held=$CONSUL_LOCK_HELD; exit 5")
	if err != nil || code != 5 || strings.TrimSpace(stdout) != "held=true" {
		t.Fatalf("code %d, stdout %q, stderr %q, err %v", code, stdout, stderr, err)
	}
	if err := sems[1].Release(); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"prefix"}, {"-n", "0", "p", "true"}, {"-timeout", "-1s", "p", "true"}} {
		if _, _, _, err := runLocker(s.addr, nil, args...); err == nil {
			t.Errorf("%q: no error", args)
		} else if _, ok := err.(usageError); !ok {
			t.Errorf("%q: %v is not a usage error", args, err)
		}
	}
}

// The built binary: pier lock's exit code is the command's (main's table
// maps errors to 1 and 2 only, so runLock ends the process with it), and
// SIGTERM to pier reaches the command, whose own exit code pier answers.
func TestLockBinaryExitCode(t *testing.T) {
	needBinary(t)
	s := startRaftServers(t, 1)[0]
	out, err := exec.Command(pierBin, "lock", "-http-addr", s.addr, "bin/lock", "echo ran; exit 4").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 4 || strings.TrimSpace(string(out)) != "ran" {
		t.Fatalf("pier lock of a command that exits 4: %v %q", err, out)
	}
	if out, err := exec.Command(pierBin, "lock", "-http-addr", s.addr, "bin/lock", "true").CombinedOutput(); err != nil {
		t.Fatalf("pier lock true: %v %q", err, out)
	}

	log := filepath.Join(t.TempDir(), "log")
	cmd := exec.Command(pierBin, "lock", "-http-addr", s.addr, "bin/lock",
		fmt.Sprintf(`trap 'echo TERM >> %[1]s; exit 9' TERM; echo started >> %[1]s; while :; do sleep 0.1; done`, log))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 15*time.Second, "the command runs", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "started")
	})
	cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	if !errors.As(err, &ee) || ee.ExitCode() != 9 {
		t.Fatalf("pier lock after SIGTERM: %v (want the command's 9)", err)
	}
	if b, _ := os.ReadFile(log); !strings.Contains(string(b), "TERM") {
		t.Fatalf("the command did not get SIGTERM: %q", b)
	}
	eventually.True(t, 10*time.Second, "no session left", func() bool {
		list, _, err := s.client.Session().List(nil)
		return err == nil && len(list) == 0
	})
}

// A signal while pier lock waits for a lock someone else holds ends the
// wait at once (not at the end of the blocking query, up to 15 s), runs
// nothing, and leaves no session behind.
func TestLockInterruptedWait(t *testing.T) {
	s := startRaftServers(t, 1)[0]
	other, err := s.client.LockKey("svc/busy/.lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Lock(nil); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		_, _, _, err := runLocker(s.addr, sigs, "svc/busy", "echo ran")
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // let it wait (it answers right either way)
	sigs <- syscall.SIGINT
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "interrupted") {
			t.Fatalf("pier lock after SIGINT while waiting: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pier lock went on waiting after SIGINT")
	}
	eventually.True(t, 10*time.Second, "only the holder's session", func() bool {
		list, _, err := s.client.Session().List(nil)
		return err == nil && len(list) == 1
	})
	if err := other.Unlock(); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "no session left", func() bool {
		list, _, err := s.client.Session().List(nil)
		return err == nil && len(list) == 0
	})
}

// A pier lock whose agent is paused cannot renew its session: it must stop
// its command once the session's TTL has passed without a renewal, before
// the servers could give the lock to anyone else (they invalidate the
// session at twice its TTL, and the next holder waits out the lock delay
// after that).
func TestLockPausedAgentStopsCommand(t *testing.T) {
	a := startAgent(t, "-dev", "-node", "lockpause")
	log := filepath.Join(t.TempDir(), "log")
	cmd := exec.Command(pierBin, "lock", "-http-addr", a.addr, "pause/lock",
		fmt.Sprintf(`trap 'echo TERM >> %[1]s; exit 9' TERM; echo started >> %[1]s; while :; do sleep 0.1; done`, log))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually.True(t, 15*time.Second, "the command runs", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "started")
	})
	a.cmd.Process.Signal(syscall.SIGSTOP)
	paused := time.Now()
	defer a.cmd.Process.Signal(syscall.SIGCONT)
	eventually.True(t, 45*time.Second, "the command gets SIGTERM while the agent is paused", func() bool {
		b, _ := os.ReadFile(log)
		return strings.Contains(string(b), "TERM")
	})
	// The servers would invalidate the session 30 s after its last renewal
	// (2x its 15 s TTL), and nobody could take the lock for 15 s more.
	if d := time.Since(paused); d >= 30*time.Second {
		t.Errorf("the command was stopped %v after the pause, not before the session could be invalidated (30 s)", d.Round(time.Second))
	} else {
		t.Logf("the command was stopped %v after its agent was paused", d.Round(time.Second))
	}
}
