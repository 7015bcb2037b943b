package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestWANTokens: two datacenters with ACLs on and default_policy deny,
// the same tokens configured in both (pier does not replicate tokens
// between datacenters). What the agent reads of dc2 on its own carries a
// token of the agent's, as Consul's: DNS (.dc2.consul, name.query.dc2.consul
// and a prepared query's failover) acl.tokens.dns, the front door's
// failover acl.tokens.agent, and a request without a token sent on with
// ?dc= the agent's default token. An agent without those tokens gets
// nothing from dc2, anonymous being denied there.
func TestWANTokens(t *testing.T) {
	needBinary(t)
	dir := tempDataDir(t)
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := file("acl.yaml", `acl:
  enabled: true
  default_policy: deny
  tokens: {initial_management: root-tok, agent: agent-tok}
  tokens_list:
    - {secret: dns-tok, description: dns, rules: {service_prefix: {"": read}, node_prefix: {"": read}}}
    - {secret: reader-tok, description: reader, rules: {service_prefix: {"": read}, node_prefix: {"": read}}}
`)
	dns := file("dns.yaml", "acl:\n  tokens: {dns: dns-tok}\n")
	door := file("door.yaml", "proxy:\n  addr: 127.0.0.1:0\n  routes:\n    - path: /\n      service: web\n      failover: {nearest: 1}\n")

	key := "dG9rZW5zLWFjcm9zcy1kYXRhY2VudGVycy0xMjM0NTY="
	dc1 := startDatacenter(t, "dc1", 0, "", "-config-file", base, "-encrypt", key)
	dc2 := startDatacenter(t, "dc2", 0, dc1.server.wan, "-config-file", base, "-encrypt", key)
	agent := func(node string, files ...string) *proc {
		args := []string{"-datacenter", "dc1", "-node", node, "-bind", "127.0.0.1", "-data-dir", tempDataDir(t),
			"-retry-join", dc1.server.gossip, "-retry-interval", "1s", "-config-file", base, "-encrypt", key}
		for _, f := range files {
			args = append(args, "-config-file", f)
		}
		return startAgent(t, args...)
	}
	c1 := agent("c1-dc1", dns)
	fd := agent("door", door)
	root := func(addr string) *consul.Client {
		c, err := consul.NewClient(&consul.Config{Address: addr, Token: "root-tok"})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	eventually.True(t, 20*time.Second, "the datacenters meet", func() bool {
		return slices.Equal(datacentersOf(root(c1.addr)), []string{"dc1", "dc2"})
	})
	b2 := startBackend(t, "dc2", "127.0.0.1:0")
	host, port, _ := net.SplitHostPort(b2.addr)
	p, _ := strconv.Atoi(port)
	r2 := root(dc2.server.addr)
	if err := r2.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "web", Name: "web", Address: host, Port: p,
		Check: &consul.AgentServiceCheck{HTTP: "http://" + b2.addr + "/", Interval: "1s", Timeout: "500ms"}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 20*time.Second, "dc2's web passes", func() bool {
		es, _, err := r2.Health().Service("web", "", true, nil)
		return err == nil && len(es) == 1
	})

	t.Run("dc", func(t *testing.T) {
		url := "http://" + c1.addr + "/v1/health/service/web?dc=dc2"
		if code, body := apiDo(t, "GET", url, "", ""); code != http.StatusForbidden {
			t.Errorf("?dc=dc2 without a token nor a default one: %d %s, want 403 from dc2", code, body)
		}
		if code, body := apiDo(t, "GET", url, "reader-tok", ""); code != 200 || !strings.Contains(body, `"dc2"`) {
			t.Errorf("?dc=dc2 with a token dc2 knows: %d %s", code, body)
		}
		// The agent's default token, set at run time, goes with a request
		// that has none: dc2 has no default token, and answers.
		if code, body := apiDo(t, "PUT", "http://"+c1.addr+"/v1/agent/token/default", "root-tok", `{"Token":"reader-tok"}`); code != 200 {
			t.Fatalf("setting the default token: %d %s", code, body)
		}
		defer apiDo(t, "PUT", "http://"+c1.addr+"/v1/agent/token/default", "root-tok", `{"Token":""}`)
		if code, body := apiDo(t, "GET", url, "", ""); code != 200 || !strings.Contains(body, `"dc2"`) {
			t.Errorf("?dc=dc2 without a token, the agent's default one sent on: %d %s", code, body)
		}
	})

	t.Run("dns", func(t *testing.T) {
		if _, err := exec.LookPath("dig"); err != nil {
			t.Skip("dig is not installed")
		}
		if _, _, err := r2.PreparedQuery().Create(&consul.PreparedQueryDefinition{Name: "web-dc2", Service: consul.ServiceQuery{Service: "web"}}, nil); err != nil {
			t.Fatal(err)
		}
		if _, _, err := root(c1.addr).PreparedQuery().Create(&consul.PreparedQueryDefinition{Name: "web-f",
			Service: consul.ServiceQuery{Service: "web", Failover: consul.QueryFailoverOptions{NearestN: 1}}}, nil); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"web.service.dc2.consul", "web-dc2.query.dc2.consul", "web-f.query.consul"} {
			// c1 has acl.tokens.dns; the door has neither it nor a default
			// token: dc2 answers it nothing.
			if got := strings.TrimSpace(digAt(t, c1.dns, name, "+short")); got != host {
				t.Errorf("dig %s with the DNS token: %q, want dc2's %s", name, got, host)
			}
			// dc2 refuses the service (SERVFAIL, as Consul answers a denied
			// read) or filters it from the query's answer (NXDOMAIN).
			if got := digAt(t, fd.dns, name); !strings.Contains(got, "NXDOMAIN") && !strings.Contains(got, "SERVFAIL") || !strings.Contains(got, "ANSWER: 0,") {
				t.Errorf("dig %s without a DNS token: want no answer\n%s", name, got)
			}
		}
	})

	t.Run("keyring", func(t *testing.T) {
		// The request's token goes with the operation to dc2, which checks
		// it against its own ACLs.
		url := "http://" + c1.addr + "/v1/operator/keyring"
		if code, body := apiDo(t, "GET", url, "", ""); code != http.StatusForbidden {
			t.Errorf("keyring list without a token: %d %s", code, body)
		}
		want := []string{"dc1/true/2/2", "dc1/false/3/3", "dc2/false/1/1"}
		eventually.NoError(t, 20*time.Second, "the keyring list answers every pool", func() error {
			code, body := apiDo(t, "GET", url, "root-tok", "")
			var rs []consul.KeyringResponse
			if code != 200 || !jsonInto(body, &rs) {
				return fmt.Errorf("%d %s", code, body)
			}
			var pools []string
			for _, r := range rs {
				pools = append(pools, fmt.Sprintf("%s/%v/%d/%d", r.Datacenter, r.WAN, r.NumNodes, r.Keys[key]))
			}
			if !slices.Equal(pools, want) {
				return fmt.Errorf("pools (dc/WAN/nodes/holding the key) %v, want %v", pools, want)
			}
			return nil
		})
	})

	t.Run("front door", func(t *testing.T) {
		// dc1 has no web: the route serves from dc2, read with the agent
		// token (anonymous is denied there).
		front := "http://" + fd.proxyAddr() + "/"
		hc := &http.Client{Timeout: 5 * time.Second}
		eventually.True(t, 30*time.Second, "the front door serves dc2's web", func() bool {
			resp, err := hc.Get(front)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode == 200 && string(b) == "dc2"
		})
	})
}
