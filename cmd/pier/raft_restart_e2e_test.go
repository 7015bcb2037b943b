package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry/gossip"
)

// restartGroup is three servers on 127.0.0.1 with free ports of every
// kind, so that a server started again on its data dir comes back on new
// gossip and server ports, as one moved to another port or host does.
type restartGroup struct {
	t     *testing.T
	procs [3]*proc
	args  [3][]string
	dirs  [3]string
	want  map[string]string
	http  *http.Client
}

// With fixedPorts each server keeps its gossip and server ports across
// restarts, as one on Consul's default ports does.
func newRestartGroup(t *testing.T, fixedPorts bool, extra ...string) *restartGroup {
	g := &restartGroup{t: t, want: map[string]string{}, http: &http.Client{Timeout: 20 * time.Second}}
	for i := range g.procs {
		g.dirs[i] = filepath.Join(t.TempDir(), "data")
		g.args[i] = append([]string{"-node", fmt.Sprintf("rs%d", i+1), "-data-dir", g.dirs[i], "-bind", "127.0.0.1",
			"-server", "-bootstrap-expect", "3", "-server-port", "0", "-retry-interval", "1s"}, extra...)
		if fixedPorts {
			for _, flag := range []string{"-serf-lan-port", "-server-port"} {
				port, err := gossip.FreePort("127.0.0.1")
				if err != nil {
					t.Fatal(err)
				}
				g.args[i] = append(g.args[i], flag, strconv.Itoa(port))
			}
		}
		if i > 0 {
			g.args[i] = append(g.args[i], "-retry-join", g.procs[0].gossip)
		}
		g.procs[i] = startAgent(t, g.args[i]...)
	}
	waitLeader(t, g.procs[0])
	return g
}

// write puts n keys under prefix through server i; every write must be
// acknowledged.
func (g *restartGroup) write(i int, prefix string, n int) {
	g.t.Helper()
	for k := range n {
		op := kvOp{key: fmt.Sprintf("%s/%03d", prefix, k), value: value(prefix, k, 100)}
		eventually.NoError(g.t, 30*time.Second, "write "+op.key, func() error {
			if err := kvDo(g.http, g.procs[i].addr, &op); err != nil || op.code != 200 || op.body != "true" {
				return fmt.Errorf("PUT %s: %v %d %s", op.key, err, op.code, op.body)
			}
			return nil
		})
		g.want[op.key] = op.value
	}
}

// follower answers a server that does not lead.
func (g *restartGroup) follower() int {
	g.t.Helper()
	_, body := httpGet(g.t, "http://"+g.procs[0].addr+"/v1/status/leader")
	var leader string
	json.Unmarshal([]byte(body), &leader)
	for i, p := range g.procs {
		if serverAddr(p) != leader {
			return i
		}
	}
	g.t.Fatalf("no follower: leader %s", body)
	return -1
}

var serverLine = regexp.MustCompile(`msg="pier agent running".* server=([0-9.:]+)`)

// serverAddr answers the server port an agent said it runs on.
func serverAddr(p *proc) string {
	if m := serverLine.FindStringSubmatch(p.logs()); m != nil {
		return m[1]
	}
	return ""
}

// caughtUp waits until server i serves every acknowledged write from its
// own state, and the configuration has three voters with i's new address.
func (g *restartGroup) caughtUp(i int, within time.Duration) {
	g.t.Helper()
	start := time.Now()
	eventually.NoError(g.t, within, fmt.Sprintf("rs%d catches up", i+1), func() error {
		got := kvDumpQuery(g.t, g.procs[i].addr, "", "recurse&stale")
		if len(got) != len(g.want) {
			return fmt.Errorf("rs%d holds %d of %d keys\n%s", i+1, len(got), len(g.want), lastLines(g.procs[i].logs(), 15))
		}
		return nil
	})
	g.t.Logf("rs%d caught up %v after its restart", i+1, time.Since(start).Round(time.Millisecond))
	diffKV(g.t, fmt.Sprintf("rs%d after its restart", i+1), kvDumpQuery(g.t, g.procs[i].addr, "", "recurse&stale"), g.want)
	eventually.NoError(g.t, within, "three voters, one at the new address", func() error {
		addr := serverAddr(g.procs[i])
		_, body := httpGet(g.t, "http://"+g.procs[(i+1)%3].addr+"/v1/status/peers")
		var peers []string
		json.Unmarshal([]byte(body), &peers)
		if len(peers) != 3 || !slices.Contains(peers, addr) {
			return fmt.Errorf("peers %v, want three with %s", peers, addr)
		}
		return nil
	})
}

// restart starts server i again on its data dir (or what is left of it),
// joining the others.
func (g *restartGroup) restart(i int) {
	args := append(g.args[i], "-retry-join", g.procs[(i+1)%3].gossip)
	g.procs[i] = startAgent(g.t, args...)
}

// TestRaftServerRestartNewAddress: a server killed and started again on
// its data dir, but on other gossip and server ports, is moved to its new
// address in the configuration and catches up with the writes it missed,
// while the other two go on acknowledging writes.
func TestRaftServerRestartNewAddress(t *testing.T) {
	g := newRestartGroup(t, false)
	g.write(0, "before", 20)
	f := g.follower()
	g.procs[f].stop(syscall.SIGKILL)
	g.write((f+1)%3, "missed", 20)
	g.restart(f)
	g.caughtUp(f, 60*time.Second)
	g.write(f, "after", 5)
	g.caughtUp(f, 30*time.Second)
}

// TestRaftServerWipedRejoins: a server whose data dir was wiped comes back
// on its ports as a new member (a new node ID), the old entry is removed,
// and it catches up from nothing.
func TestRaftServerWipedRejoins(t *testing.T) {
	g := newRestartGroup(t, true)
	g.write(0, "before", 20)
	f := g.follower()
	g.procs[f].stop(syscall.SIGKILL)
	if err := os.RemoveAll(g.dirs[f]); err != nil {
		t.Fatal(err)
	}
	g.write((f+1)%3, "missed", 20)
	g.restart(f)
	g.caughtUp(f, 60*time.Second)
	_, self := httpGet(t, "http://"+g.procs[f].addr+"/v1/agent/self")
	var me struct{ Config struct{ NodeID string } }
	json.Unmarshal([]byte(self), &me)
	eventually.NoError(t, 30*time.Second, "three servers, the wiped one under its new ID", func() error {
		_, body := httpGet(t, "http://"+g.procs[(f+1)%3].addr+"/v1/operator/raft/configuration")
		var c struct{ Servers []struct{ ID, Node string } }
		json.Unmarshal([]byte(body), &c)
		if len(c.Servers) != 3 || !slices.ContainsFunc(c.Servers, func(s struct{ ID, Node string }) bool { return s.ID == me.Config.NodeID }) {
			return fmt.Errorf("configuration %s, want three with %s", body, me.Config.NodeID)
		}
		return nil
	})
}
