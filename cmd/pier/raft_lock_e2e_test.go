package main

import (
	"bufio"
	"bytes"
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
)

// lockHold is what each holder's command does with the lock: note its
// start, hold it 3 s, note its end (also when pier lock sends SIGTERM on a
// lost lock). It is shorter than the lock delay on purpose; see
// TestRaftLockUnderFaults.
const lockHold = `trap 'echo "end $LOCK_ID $(date +%s%N)" >> "$LOCK_FILE"; exit 143' TERM INT
echo "start $LOCK_ID $(date +%s%N)" >> "$LOCK_FILE"
sleep 3 & wait $!
echo "end $LOCK_ID $(date +%s%N)" >> "$LOCK_FILE"`

// lockDelay is Consul's default session lock delay, pier lock's sessions'.
const lockDelay = 15 * time.Second

// locker runs pier lock over and over through one agent.
type lockRunner struct {
	idx   int
	agent *member
	mu    sync.Mutex
	cur   *exec.Cmd
	exits map[string]time.Time // run id -> when its pier lock exited
	logs  bytes.Buffer
}

// hold is one holder's time with the lock, from the shared file.
type hold struct {
	id         string
	start, end time.Time
	noEnd      bool // the command wrote no end line (killed): end is its pier lock's exit
}

// TestRaftLockUnderFaults: three pier lock processes on three agents take
// turns holding a lock while the test SIGKILLs, then SIGSTOPs, the agent
// that the holder's pier lock talks to. From the holders' own notes:
// never two holders at once; after each fault a new holder appears, no
// sooner than the lock delay (the holder's session is invalidated when
// gossip finds its agent failed, and the lock delay keeps the lock free
// after that) and within a loose bound.
//
// What is and is not checked: a pier lock whose agent is paused cannot
// learn anything (its renewals and its watch of the lock hang with the
// agent), so its command runs on until the agent is back. What protects
// the next holder then is only the lock delay, as with consul lock: the
// commands here hold the lock for less than the lock delay, so "never two
// holders" is what Consul promises too. A command that holds longer than
// the lock delay plus failure detection, behind a paused agent, would run
// beside the next holder, with pier as with Consul.
func TestRaftLockUnderFaults(t *testing.T) {
	c := newFaultCluster(t, 3, 2, false)
	file := filepath.Join(t.TempDir(), "holders")
	// c1, c2 and the leader: the SIGKILL takes a client's agent, the
	// SIGSTOP the leader's, behind which the other two's blocking queries
	// (forwarded to the leader) are held.
	leader := c.waitLeader()
	agents := []*member{c.nodes[3], c.nodes[4], leader}
	runners := make([]*lockRunner, len(agents))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, a := range agents {
		r := &lockRunner{idx: i, agent: a, exits: map[string]time.Time{}}
		runners[i] = r
		wg.Add(1)
		go func() {
			defer wg.Done()
			for run := 0; ; run++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("L%d-%d", i, run)
				cmd := exec.Command(pierBin, "lock", "-verbose", "-http-addr", c.api(a), "faults/lock", lockHold)
				cmd.Env = append(os.Environ(), "LOCK_ID="+id, "LOCK_FILE="+file)
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				r.mu.Lock()
				err := cmd.Start()
				if err == nil {
					r.cur = cmd
				}
				r.mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
				cmd.Wait()
				r.mu.Lock()
				r.cur = nil
				r.exits[id] = time.Now()
				fmt.Fprintf(&r.logs, "--- %s through %s at %s\n%s", id, a.name, time.Now().Format("15:04:05.000"), out.String())
				r.mu.Unlock()
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
	}
	stopRunners := func() {
		select {
		case <-stop:
			return
		default:
		}
		close(stop)
		// A pier lock whose agent is paused waits for it: let it go on.
		for _, m := range c.nodes {
			if m.paused {
				c.pause(m, false)
			}
		}
		signal := func(sig os.Signal) {
			for _, r := range runners {
				r.mu.Lock()
				if r.cur != nil {
					r.cur.Process.Signal(sig)
				}
				r.mu.Unlock()
			}
		}
		signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("a pier lock did not end within 30s of SIGINT")
			signal(syscall.SIGKILL)
			<-done
		}
	}
	defer stopRunners()

	// holder answers the run holding the lock now (a start with no end).
	holder := func() (string, time.Time) {
		hs := readHolds(t, file, nil)
		if len(hs) > 0 && hs[len(hs)-1].end.IsZero() {
			return hs[len(hs)-1].id, hs[len(hs)-1].start
		}
		return "", time.Time{}
	}
	runnerOf := func(id string) *lockRunner {
		i, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(id, "-", 2)[0], "L"))
		return runners[i]
	}
	// waitHolder waits for a holder that started after since, not through
	// the runner not; it answers the run and its start.
	waitHolder := func(since time.Time, not *lockRunner, within time.Duration) (string, time.Time) {
		deadline := time.Now().Add(within)
		for time.Now().Before(deadline) {
			for _, h := range readHolds(t, file, nil) {
				if h.start.After(since) && runnerOf(h.id) != not {
					return h.id, h.start
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		b, _ := os.ReadFile(file)
		t.Logf("holders' notes:\n%s", b)
		for _, r := range runners {
			r.mu.Lock()
			t.Logf("pier lock through %s:\n%s", r.agent.name, lastLines(r.logs.String(), 30))
			r.mu.Unlock()
		}
		for _, m := range c.nodes {
			if m.paused {
				continue
			}
			for _, path := range []string{"/v1/session/list?stale", "/v1/kv/faults/lock/.lock?stale", "/v1/health/state/critical?stale", "/v1/status/leader"} {
				code, body := httpGet(t, "http://"+c.api(m)+path)
				t.Logf("%s %s: %d %s", m.name, path, code, body)
			}
			t.Logf("%s's log:\n%s", m.name, lastLines(m.p.logs(), 25))
		}
		t.Fatalf("no new holder within %v", within)
		return "", time.Time{}
	}
	const bound = 90 * time.Second // lock delay, failure detection, a forwarded query to a paused leader failing (wait + 21 s), a shared machine

	// Turns taken with every agent up: a release hands the lock on at once
	// (the lock delay follows only an invalidated session).
	deadline := time.Now().Add(bound)
	for done := 0; done < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d holds in %v with every agent up", done, bound)
		}
		time.Sleep(100 * time.Millisecond)
		done = 0
		for _, h := range readHolds(t, file, nil) {
			if !h.end.IsZero() {
				done++
			}
		}
	}

	var gaps []string
	for _, fault := range []string{"SIGKILL", "SIGSTOP"} {
		// A holder in the middle of its hold, through a client for the
		// SIGKILL, through the leader for the SIGSTOP.
		var id string
		var started time.Time
		deadline := time.Now().Add(bound)
		for id == "" || time.Since(started) > time.Second || (runnerOf(id).agent == leader) != (fault == "SIGSTOP") {
			if time.Now().After(deadline) {
				t.Fatalf("no one holds the lock for the %s", fault)
			}
			time.Sleep(20 * time.Millisecond)
			id, started = holder()
		}
		victim := runnerOf(id)
		at := time.Now()
		if fault == "SIGKILL" {
			c.kill(victim.agent)
		} else {
			c.pause(victim.agent, true)
		}
		next, nextStart := waitHolder(at, victim, bound)
		gap := nextStart.Sub(at)
		t.Logf("%s of %s (the agent of holder %s): holder %s %v later", fault, victim.agent.name, id, next, gap.Round(time.Millisecond))
		gaps = append(gaps, fmt.Sprintf("%s %v", fault, gap.Round(time.Millisecond)))
		if gap < lockDelay-time.Second {
			t.Errorf("holder %s took the lock %v after %s of the holder's agent: sooner than the lock delay (%v)", next, gap, fault, lockDelay)
		}
		if fault == "SIGKILL" {
			c.start(victim.agent)
		} else {
			c.pause(victim.agent, false)
		}
	}
	// A few turns more with every agent back.
	time.Sleep(5 * time.Second)
	stopRunners()

	exits := map[string]time.Time{}
	for _, r := range runners {
		for id, at := range r.exits {
			exits[id] = at
		}
	}
	hs := readHolds(t, file, exits)
	if len(hs) < 4 {
		t.Errorf("only %d holds", len(hs))
	}
	for i := 1; i < len(hs); i++ {
		if prev := hs[i-1]; hs[i].start.Before(prev.end) {
			t.Errorf("two holders at once: %s from %s to %s (end noted: %v), %s from %s", prev.id, prev.start.Format("15:04:05.000"), prev.end.Format("15:04:05.000"), !prev.noEnd, hs[i].id, hs[i].start.Format("15:04:05.000"))
		}
	}
	t.Logf("%d holds, new holder after each fault: %s", len(hs), strings.Join(gaps, ", "))
	if t.Failed() {
		b, _ := os.ReadFile(file)
		t.Logf("holders' notes:\n%s", b)
		for _, r := range runners {
			t.Logf("pier lock through %s:\n%s", r.agent.name, lastLines(r.logs.String(), 40))
		}
	}
}

// readHolds reads the holders' notes, in order of start. A hold with no
// end line ends when its pier lock exited (exits), or not yet (zero).
func readHolds(t *testing.T, file string, exits map[string]time.Time) []hold {
	t.Helper()
	f, err := os.Open(file)
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	byID := map[string]*hold{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 {
			continue // a line being written
		}
		ns, err := strconv.ParseInt(fs[2], 10, 64)
		if err != nil {
			continue
		}
		h := byID[fs[1]]
		if h == nil {
			h = &hold{id: fs[1]}
			byID[fs[1]] = h
		}
		switch fs[0] {
		case "start":
			h.start = time.Unix(0, ns)
		case "end":
			h.end = time.Unix(0, ns)
		}
	}
	var out []hold
	for _, h := range byID {
		if h.start.IsZero() {
			continue
		}
		if h.end.IsZero() && exits != nil {
			h.noEnd = true
			h.end = exits[h.id]
			if h.end.IsZero() {
				h.end = time.Now()
			}
		}
		out = append(out, *h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].start.Before(out[j].start) })
	return out
}
