package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// cutDC is a datacenter of a server and a client, each on an address and
// under a uid of its own, so that the test can cut it off from the others.
type cutDC struct {
	name   string
	ips    []string // server's, client's
	uids   []int
	server *proc
	client *proc
}

// TestWANCut cuts the WAN link between two datacenters (iptables rules on
// their agents' uids and addresses): each datacenter goes on working on
// its own, ?dc= across the cut answers 500 within the request's timeout
// (at once once the WAN pool sees the other servers failed), and the two
// meet again when the cut heals. dc1's client is also a front door whose
// route fails over to dc2 (dc1 has no instance): it answers at once
// during the cut, and serves dc2 again after it heals (its watch of dc2,
// a blocking query held across the cut, is given up and retried).
func TestWANCut(t *testing.T) {
	needBinary(t)
	fc := &faultCluster{t: t, prefix: fmt.Sprintf("127.%d.%d.", 100+os.Getpid()%100, 1+os.Getpid()/100%250)}
	var err error
	if fc.dir, err = os.MkdirTemp("", "multidc-cut"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(fc.dir) })
	fc.setupPartitions()
	// WAN timings of a fast network, so that the cut is detected in
	// seconds (Consul's gossip_wan keys).
	conf := filepath.Join(fc.dir, "wan.yaml")
	if err := os.WriteFile(conf, []byte("gossip_wan: {probe_interval: 500ms, probe_timeout: 250ms, suspicion_mult: 2, gossip_interval: 100ms}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := func(d *cutDC, i int, args ...string) *proc {
		data := filepath.Join(fc.dir, d.name+strconv.Itoa(i))
		if err := os.Mkdir(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(data, d.uids[i], d.uids[i]); err != nil {
			t.Fatal(err)
		}
		prefix := []string{"setpriv", "--reuid", strconv.Itoa(d.uids[i]), "--regid", strconv.Itoa(d.uids[i]), "--clear-groups"}
		p := startAgentIn(t, prefix, append([]string{"-datacenter", d.name, "-bind", d.ips[i], "-client", d.ips[i], "-data-dir", data, "-retry-interval", "1s"}, args...)...)
		t.Cleanup(func() { p.cmd.Process.Signal(syscall.SIGCONT) })
		return p
	}
	uid := 62000 + os.Getpid()%1000*10
	dcs := []*cutDC{
		{name: "dc1", ips: []string{fc.prefix + "1", fc.prefix + "2"}, uids: []int{uid, uid + 1}},
		{name: "dc2", ips: []string{fc.prefix + "11", fc.prefix + "12"}, uids: []int{uid + 2, uid + 3}},
	}
	door := filepath.Join(fc.dir, "door.yaml")
	if err := os.WriteFile(door, []byte("proxy:\n  addr: "+dcs[0].ips[1]+":0\n  routes:\n    - path: /\n      service: site\n      failover: {nearest: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, d := range dcs {
		args := []string{"-node", "s-" + d.name, "-server", "-bootstrap-expect", "1", "-server-port", "0", "-config-file", conf}
		if i > 0 {
			args = append(args, "-retry-join-wan", dcs[0].server.wan)
		}
		d.server = start(d, 0, args...)
		cargs := []string{"-node", "c-" + d.name, "-retry-join", d.server.gossip}
		if i == 0 {
			cargs = append(cargs, "-config-file", door)
		}
		d.client = start(d, 1, cargs...)
	}
	c1, c2 := apiClient(t, dcs[0].client.addr), apiClient(t, dcs[1].client.addr)
	q2 := &consul.QueryOptions{Datacenter: "dc2"}
	eventually.True(t, 30*time.Second, "dc2's client writes through its server", func() bool {
		_, err := c2.KV().Put(&consul.KVPair{Key: "k", Value: []byte("dc2")}, nil)
		return err == nil
	})
	eventually.True(t, 30*time.Second, "dc1 reads dc2's key", func() bool {
		kv, _, err := c1.KV().Get("k", q2)
		return err == nil && kv != nil
	})
	site := startBackend(t, "dc2", dcs[1].ips[1]+":0")
	host, port, _ := net.SplitHostPort(site.addr)
	pn, _ := strconv.Atoi(port)
	if err := c2.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "site", Name: "site", Address: host, Port: pn}); err != nil {
		t.Fatal(err)
	}
	front := "http://" + dcs[0].client.proxyAddr() + "/"
	frontClient := &http.Client{Timeout: 5 * time.Second}
	doorAnswer := func() (int, string) {
		resp, err := frontClient.Get(front)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually.True(t, 30*time.Second, "dc1's front door serves dc2's site through its failover route", func() bool {
		code, body := doorAnswer()
		return code == 200 && body == "dc2"
	})

	// The cut: neither datacenter's agents reach the other's addresses.
	cut := func() {
		for a, b := range map[int]int{0: 1, 1: 0} {
			for _, u := range dcs[a].uids {
				for _, ip := range dcs[b].ips {
					if err := iptables("-A", fc.chain+"-out", "-m", "owner", "--uid-owner", strconv.Itoa(u), "-d", ip, "-j", "DROP"); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	cut()
	// Across the cut: a 500 within the request's timeout, never a hang.
	hc := &http.Client{Timeout: 20 * time.Second}
	began := time.Now()
	resp, err := hc.Get("http://" + dcs[0].client.addr + "/v1/kv/k?dc=dc2")
	if err != nil {
		t.Fatalf("?dc=dc2 across the cut: %v after %v", err, time.Since(began))
	}
	resp.Body.Close()
	first := time.Since(began)
	if resp.StatusCode != http.StatusInternalServerError {
		t.Fatalf("?dc=dc2 across the cut: %d", resp.StatusCode)
	}
	t.Logf("?dc=dc2 across a fresh cut: 500 after %v", first.Round(time.Millisecond))
	var last time.Duration
	eventually.True(t, 30*time.Second, "dc1 answers No path to datacenter at once", func() bool {
		began := time.Now()
		code, body := get(t, "http://"+dcs[0].client.addr+"/v1/kv/k?dc=dc2")
		last = time.Since(began)
		return code == http.StatusInternalServerError && strings.Contains(body, "No path to datacenter") && last < time.Second
	})
	t.Logf("?dc=dc2 once the WAN pool saw the cut: 500 No path to datacenter after %v", last.Round(time.Millisecond))
	// Each datacenter works on its own.
	for _, c := range []*consul.Client{c1, c2} {
		if _, err := c.KV().Put(&consul.KVPair{Key: "during", Value: []byte("cut")}, nil); err != nil {
			t.Errorf("a local write during the cut: %v", err)
		}
		if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web", Port: 80}); err != nil {
			t.Errorf("a registration during the cut: %v", err)
		}
		if es, _, err := c.Health().Service("web", "", true, nil); err != nil || len(es) != 1 {
			t.Errorf("a local read during the cut: %v, %v", es, err)
		}
	}

	// The front door answers during the cut, at once, without dc2.
	var doorCode int
	began = time.Now()
	eventually.True(t, 60*time.Second, "dc1's front door answers at once during the cut", func() bool {
		t0 := time.Now()
		doorCode, _ = doorAnswer()
		return doorCode >= 500 && time.Since(t0) < time.Second
	})
	t.Logf("dc1's front door answered %d at once %v into the cut", doorCode, time.Since(began).Round(time.Millisecond))

	// Healed, the WAN pool meets again and ?dc= works.
	if err := iptables("-F", fc.chain+"-out"); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	eventually.True(t, 45*time.Second, "dc1 reads dc2 again after the cut heals", func() bool {
		kv, _, err := c1.KV().Get("during", q2)
		return err == nil && kv != nil
	})
	t.Logf("?dc=dc2 answered again %v after the cut healed", time.Since(began).Round(time.Millisecond))
	eventually.True(t, 90*time.Second, "dc1's front door serves dc2 again after the cut heals", func() bool {
		code, body := doorAnswer()
		return code == 200 && body == "dc2"
	})
	t.Logf("dc1's front door served dc2 again %v after the cut healed", time.Since(began).Round(time.Millisecond))
}
