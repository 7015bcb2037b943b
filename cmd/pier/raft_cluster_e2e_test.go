package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry/gossip"
)

// faultCluster is a cluster of real pier agents, servers and clients, each
// on an address of its own in 127.0.0.0/8 with its gossip and server ports
// fixed, so that a server killed and started again on its data dir is the
// same server to the others. The fault tests kill, pause and partition its
// members.
//
// Partitions: on loopback, a socket that does not bind its source address
// sends from 127.0.0.1 whatever address it dials (the route to 127/8 says
// src 127.0.0.1), and memberlist's and Raft's dialers do not bind theirs,
// so a rule on -s of an agent's address does not catch what it sends. With
// partitionable, each agent runs under a uid of its own (setpriv), and a
// cut is two rules in chains of the test's own: OUTPUT drops every packet
// of the agent's uid, INPUT every packet to its address; both let the
// agent's HTTP API through, so the test itself can still ask the cut-off
// agent what it answers.
type faultCluster struct {
	t      *testing.T
	dir    string // data dirs, readable by the agents' uids
	prefix string // 127.X.Y. of the members' addresses
	chain  string // iptables chains <chain>-in and <chain>-out, when partitionable

	mu    sync.Mutex
	nodes []*member
}

// member is one agent of a faultCluster.
type member struct {
	name   string
	ip     string
	uid    int // 0: runs as the test's user
	server bool
	gossip int // serf LAN port
	sport  int // server port (servers)
	args   []string
	p      *proc
	paused bool
}

// api answers the member's HTTP address (it changes with a restart).
func (c *faultCluster) api(m *member) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m.p.addr
}

// newFaultCluster starts servers (-bootstrap-expect servers) and clients.
func newFaultCluster(t *testing.T, servers, clients int, partitionable bool) *faultCluster {
	t.Helper()
	needBinary(t)
	c := &faultCluster{t: t, prefix: fmt.Sprintf("127.%d.%d.", 100+os.Getpid()%100, 1+os.Getpid()/100%250)}
	var err error
	if c.dir, err = os.MkdirTemp("", "pier-faults"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(c.dir) })
	if partitionable {
		c.setupPartitions()
	}
	var joins []string
	for i := range servers + clients {
		m := &member{name: fmt.Sprintf("s%d", i+1), ip: c.prefix + strconv.Itoa(i+1), server: i < servers}
		if !m.server {
			m.name = fmt.Sprintf("c%d", i-servers+1)
		}
		if partitionable {
			m.uid = 61000 + os.Getpid()%1000*10 + i
		}
		if m.gossip, err = gossip.FreePort(m.ip); err != nil {
			t.Fatal(err)
		}
		if m.server {
			if m.sport, err = gossip.FreePort(m.ip); err != nil {
				t.Fatal(err)
			}
			joins = append(joins, net.JoinHostPort(m.ip, strconv.Itoa(m.gossip)))
		}
		data := filepath.Join(c.dir, m.name)
		if err := os.Mkdir(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if m.uid != 0 {
			if err := os.Chown(data, m.uid, m.uid); err != nil {
				t.Fatal(err)
			}
		}
		m.args = []string{"-node", m.name, "-bind", m.ip, "-client", m.ip, "-data-dir", data,
			"-serf-lan-port", strconv.Itoa(m.gossip), "-retry-interval", "1s"}
		if m.server {
			m.args = append(m.args, "-server", "-bootstrap-expect", strconv.Itoa(servers), "-server-port", strconv.Itoa(m.sport))
		}
		c.nodes = append(c.nodes, m)
	}
	for _, m := range c.nodes {
		for _, j := range joins {
			if j != net.JoinHostPort(m.ip, strconv.Itoa(m.gossip)) {
				m.args = append(m.args, "-retry-join", j)
			}
		}
	}
	var wg sync.WaitGroup
	for _, m := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.start(m)
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	c.waitLeader()
	return c
}

// start runs m's agent (again).
func (c *faultCluster) start(m *member) {
	var prefix []string
	if m.uid != 0 {
		prefix = []string{"setpriv", "--reuid", strconv.Itoa(m.uid), "--regid", strconv.Itoa(m.uid), "--clear-groups"}
	}
	p := startAgentIn(c.t, prefix, m.args...)
	c.mu.Lock()
	m.p, m.paused = p, false
	c.mu.Unlock()
	// A paused agent is let go before the kill of the harness's cleanup,
	// which waits for the exit.
	c.t.Cleanup(func() { p.cmd.Process.Signal(syscall.SIGCONT) })
}

// kill ends m's agent with SIGKILL.
func (c *faultCluster) kill(m *member) {
	c.mu.Lock()
	p := m.p
	c.mu.Unlock()
	p.stop(syscall.SIGKILL)
}

// pause stops m's agent with SIGSTOP, or lets it go on with SIGCONT.
func (c *faultCluster) pause(m *member, stop bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sig := syscall.SIGCONT
	if stop {
		sig = syscall.SIGSTOP
	}
	if err := m.p.cmd.Process.Signal(sig); err != nil {
		c.t.Errorf("%v to %s: %v", sig, m.name, err)
	}
	m.paused = stop
}

func (c *faultCluster) servers() []*member {
	var out []*member
	for _, m := range c.nodes {
		if m.server {
			out = append(out, m)
		}
	}
	return out
}

// leaderOf answers the server that m's agent says leads, nil if none.
func (c *faultCluster) leaderOf(m *member) *member {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + c.api(m) + "/v1/status/leader")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var b [128]byte
	n, _ := resp.Body.Read(b[:])
	addr := strings.Trim(strings.TrimSpace(string(b[:n])), `"`)
	for _, s := range c.servers() {
		if addr == net.JoinHostPort(s.ip, strconv.Itoa(s.sport)) {
			return s
		}
	}
	return nil
}

// waitLeader waits until every server but those in except names the same
// leader, not one of except, and answers it.
func (c *faultCluster) waitLeader(except ...*member) *member {
	c.t.Helper()
	var l *member
	eventually.True(c.t, 45*time.Second, "one leader that every server names", func() bool {
		l = nil
		for _, s := range c.servers() {
			skip := false
			for _, e := range except {
				skip = skip || e == s
			}
			if skip {
				continue
			}
			sl := c.leaderOf(s)
			if sl == nil || (l != nil && sl != l) {
				return false
			}
			for _, e := range except {
				if sl == e {
					return false
				}
			}
			l = sl
		}
		return l != nil
	})
	return l
}

// iptables runs one iptables command.
func iptables(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// setupPartitions makes the test's chains, jumped to from INPUT and
// OUTPUT, and removes them (and only them) when the test ends; it skips
// the test where that cannot be done.
func (c *faultCluster) setupPartitions() {
	t := c.t
	if os.Geteuid() != 0 {
		t.Skip("partitions need root (iptables, setpriv)")
	}
	for _, cmd := range []string{"iptables", "setpriv"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Skipf("partitions need %s", cmd)
		}
	}
	c.chain = fmt.Sprintf("PIERF%d", os.Getpid())
	for _, dir := range []string{"in", "out"} {
		if err := iptables("-N", c.chain+"-"+dir); err != nil {
			t.Skipf("cannot make an iptables chain here: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, j := range [][2]string{{"INPUT", "-in"}, {"OUTPUT", "-out"}} {
			for iptables("-D", j[0], "-j", c.chain+j[1]) == nil {
			}
			iptables("-F", c.chain+j[1])
			if err := iptables("-X", c.chain+j[1]); err != nil {
				t.Errorf("removing the test's chain: %v", err)
			}
		}
	})
	for _, j := range [][2]string{{"INPUT", "-in"}, {"OUTPUT", "-out"}} {
		if err := iptables("-I", j[0], "-j", c.chain+j[1]); err != nil {
			t.Fatal(err)
		}
	}
	// The pier binary's directory is the test's, 0700: the agents' uids
	// must be able to run it.
	if err := os.Chmod(filepath.Dir(pierBin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// cut takes m off the network but for its HTTP API, or (off false) heals
// every cut.
func (c *faultCluster) cut(m *member, off bool) {
	c.t.Helper()
	if !off {
		for _, dir := range []string{"-in", "-out"} {
			if err := iptables("-F", c.chain+dir); err != nil {
				c.t.Fatal(err)
			}
		}
		return
	}
	api := c.api(m)
	_, port, _ := net.SplitHostPort(api)
	uid := strconv.Itoa(m.uid)
	for _, r := range [][]string{
		{"-A", c.chain + "-in", "-d", m.ip, "-p", "tcp", "--dport", port, "-j", "RETURN"},
		{"-A", c.chain + "-in", "-d", m.ip, "-j", "DROP"},
		{"-A", c.chain + "-out", "-m", "owner", "--uid-owner", uid, "-p", "tcp", "--sport", port, "-j", "RETURN"},
		{"-A", c.chain + "-out", "-m", "owner", "--uid-owner", uid, "-j", "DROP"},
	} {
		if err := iptables(r...); err != nil {
			c.t.Fatal(err)
		}
	}
}
