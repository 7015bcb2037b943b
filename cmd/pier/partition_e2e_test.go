package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// netns is a set of network namespaces this test made: one host per agent,
// each with a veth into a bridge in a hub namespace, on 10.77.0.0/24. No
// traffic leaves them.
type netns struct {
	t      *testing.T
	prefix string
	hosts  []string
}

func (n *netns) ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (n *netns) hub() string         { return n.prefix + "hub" }
func (n *netns) ns(i int) string     { return n.prefix + n.hosts[i] }
func (n *netns) addr(i int) string   { return fmt.Sprintf("10.77.0.%d", i+1) }
func (n *netns) exec(i int) []string { return []string{"ip", "netns", "exec", n.ns(i)} }

// newNetns makes the namespaces, or skips the test where it cannot.
func newNetns(t *testing.T, hosts ...string) *netns {
	t.Helper()
	needBinary(t)
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root (.ci/run runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the ip command (iproute2) is not installed (.ci/run installs it)")
	}
	n := &netns{t: t, prefix: fmt.Sprintf("pier%d", os.Getpid()%100000), hosts: hosts}
	t.Cleanup(func() {
		for i := range hosts {
			exec.Command("ip", "netns", "del", n.ns(i)).Run()
		}
		exec.Command("ip", "netns", "del", n.hub()).Run()
	})
	if err := n.ip("netns", "add", n.hub()); err != nil {
		t.Skipf("cannot make network namespaces here: %v", err)
	}
	steps := [][]string{
		{"-n", n.hub(), "link", "add", "br0", "type", "bridge"},
		{"-n", n.hub(), "link", "set", "br0", "up"},
	}
	for i := range hosts {
		veth, peer := fmt.Sprintf("%sv%d", n.prefix, i), fmt.Sprintf("%sh%d", n.prefix, i)
		steps = append(steps,
			[]string{"netns", "add", n.ns(i)},
			[]string{"link", "add", veth, "type", "veth", "peer", "name", peer},
			[]string{"link", "set", veth, "netns", n.ns(i)},
			[]string{"link", "set", peer, "netns", n.hub()},
			[]string{"-n", n.hub(), "link", "set", peer, "master", "br0", "up"},
			[]string{"-n", n.ns(i), "link", "set", "lo", "up"},
			[]string{"-n", n.ns(i), "addr", "add", n.addr(i) + "/24", "dev", veth},
			[]string{"-n", n.ns(i), "link", "set", veth, "up"},
		)
	}
	for _, s := range steps {
		if err := n.ip(s...); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// cut takes host i off the bridge, or puts it back.
func (n *netns) cut(i int, off bool) {
	state := "up"
	if off {
		state = "down"
	}
	if err := n.ip("-n", n.hub(), "link", "set", fmt.Sprintf("%sh%d", n.prefix, i), state); err != nil {
		n.t.Fatal(err)
	}
}

// view is what one agent's catalog says: service instances ("name@node")
// with their aggregate health.
func (n *netns) view(i int, api string) map[string]string {
	out := map[string]string{}
	var names map[string][]string
	if err := n.get(i, api, "/v1/catalog/services", &names); err != nil {
		return nil
	}
	for name := range names {
		var es []healthEntry
		if err := n.get(i, api, "/v1/health/service/"+name, &es); err != nil {
			return nil
		}
		for _, e := range es {
			st := "passing"
			for _, c := range e.Checks {
				if c.Status != "passing" {
					st = c.Status
				}
			}
			out[name+"@"+e.Node.Node] = st
		}
	}
	return out
}

func (n *netns) get(i int, api, path string, v any) error {
	argv := append(n.exec(i), "curl", "-sS", "--max-time", "5", "http://"+api+path)
	b, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// converge waits until host i's view satisfies want.
func (n *netns) converge(i int, api string, d time.Duration, what string, want func(map[string]string) bool) {
	n.t.Helper()
	// Polling, not a subscription: the agents are in other namespaces.
	eventually.NoError(n.t, d, what+" on host "+n.hosts[i], func() error {
		if v := n.view(i, api); v == nil || !want(v) {
			return fmt.Errorf("its view: %v", v)
		}
		return nil
	})
}

func has(v map[string]string, keys ...string) bool {
	for _, k := range keys {
		kv := strings.SplitN(k, "=", 2)
		if v[kv[0]] != kv[1] {
			return false
		}
	}
	return true
}

// TestPartitionHeals puts three agents on three hosts, cuts one off, checks
// that both sides keep serving their own view, heals, and checks that the
// catalog converges.
func TestPartitionHeals(t *testing.T) {
	requireCurl(t)
	n := newNetns(t, "a", "b", "c")
	apis := make([]string, 3)
	for i, h := range n.hosts {
		args := []string{"-node", h, "-data-dir", t.TempDir(), "-bind", n.addr(i), "-client", n.addr(i), "-serf-lan-port", "8301"}
		if i > 0 {
			args = append(args, "-retry-join", n.addr(0))
		}
		p := startAgentIn(t, n.exec(i), args...)
		apis[i] = p.addr
	}
	register := func(i int, name string) {
		t.Helper()
		argv := append(n.exec(i), "curl", "-sS", "-f", "-X", "PUT", "-d", `{"Name":"`+name+`","Port":80}`, "http://"+apis[i]+"/v1/agent/service/register")
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("register %s on %s: %v %s", name, n.hosts[i], err, out)
		}
	}
	register(0, "web")
	for i := range n.hosts {
		n.converge(i, apis[i], 30*time.Second, "web replicated", func(v map[string]string) bool {
			return has(v, "web@a=passing", "consul@a=passing", "consul@b=passing", "consul@c=passing")
		})
	}

	n.cut(2, true)
	register(0, "api")
	register(2, "cache")
	for _, i := range []int{0, 1} {
		n.converge(i, apis[i], 60*time.Second, "the majority side sees c failed and api", func(v map[string]string) bool {
			return has(v, "api@a=passing", "web@a=passing", "consul@c=critical") && v["cache@c"] == ""
		})
	}
	n.converge(2, apis[2], 60*time.Second, "the cut-off side serves its own view", func(v map[string]string) bool {
		return has(v, "cache@c=passing", "web@a=critical", "consul@b=critical") && v["api@a"] == ""
	})

	n.cut(2, false)
	want := []string{"web@a=passing", "api@a=passing", "cache@c=passing", "consul@a=passing", "consul@b=passing", "consul@c=passing"}
	for i := range n.hosts {
		n.converge(i, apis[i], 90*time.Second, "healed", func(v map[string]string) bool {
			return has(v, want...) && len(v) == len(want)
		})
	}
}
