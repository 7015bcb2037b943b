package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// replicatedDCs starts dc1, the primary, and dc2, a secondary that
// replicates dc1's ACL objects (tokens included, with root-tok, which dc1
// knows from its configuration), each a server and one client, ACLs on
// with default_policy deny; extra are more flags for dc2's server.
func replicatedDCs(t testing.TB, extra ...string) (dc1, dc2 *datacenter) {
	t.Helper()
	return secondaryDC(t, "primary_datacenter: dc1\nacl:\n  enable_token_replication: true\n  tokens: {replication: root-tok}\n", extra...)
}

// secondaryDC is replicatedDCs with dc2's config file conf.
func secondaryDC(t testing.TB, conf string, extra ...string) (dc1, dc2 *datacenter) {
	t.Helper()
	dir := tempDataDir(t)
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	base := file("acl.yaml", "acl:\n  enabled: true\n  default_policy: deny\n  tokens: {initial_management: root-tok, agent: root-tok}\n")
	second := file("dc2.yaml", conf)
	// WAN timings of a fast network: a datacenter gone is seen in seconds.
	wan := file("wan.yaml", "gossip_wan: {probe_interval: 500ms, probe_timeout: 250ms, suspicion_mult: 2, gossip_interval: 100ms}\n")
	dc1 = startDatacenter(t, "dc1", 1, "", "-config-file", base, "-config-file", wan)
	files := []string{"-config-file", base, "-config-file", second, "-config-file", wan}
	dc2 = startDatacenter(t, "dc2", 0, dc1.server.wan, append(slices.Clone(files), extra...)...)
	dc2.clients = append(dc2.clients, startAgent(t, append([]string{"-datacenter", "dc2", "-node", "c1-dc2", "-bind", "127.0.0.1",
		"-data-dir", tempDataDir(t), "-retry-join", dc2.server.gossip, "-retry-interval", "1s"}, files...)...))
	eventually.True(t, 30*time.Second, "the datacenters meet", func() bool {
		return slices.Equal(datacentersOf(tokenClient(t, dc2.clients[0].addr, "root-tok")), []string{"dc2", "dc1"})
	})
	return dc1, dc2
}

func tokenClient(t testing.TB, addr, token string) *consul.Client {
	t.Helper()
	c, err := consul.NewClient(&consul.Config{Address: addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestACLReplication: dc2 replicates dc1's policies, roles and global
// tokens. A token made in dc1 works in dc2 (on dc2's client, and from
// dc1's client with ?dc=dc2); a
// policy changed in dc1 changes what it may do in dc2; a token deleted in
// dc1 is refused in dc2. A local token made in dc2 stays there; a policy
// and a global token made through dc2 are written in dc1 and work in dc2
// as soon as the write answers. /v1/acl/replication says so.
func TestACLReplication(t *testing.T) {
	needBinary(t)
	dc1, dc2 := replicatedDCs(t)
	r1, r2 := tokenClient(t, dc1.clients[0].addr, "root-tok"), tokenClient(t, dc2.clients[0].addr, "root-tok")
	if err := r2.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "web", Name: "web", Port: 80}); err != nil {
		t.Fatal(err)
	}
	pol, _, err := r1.ACL().PolicyCreate(&consul.ACLPolicy{Name: "web-read", Rules: `service_prefix "web" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// dc2's client, asked directly: 200 once the token is there, 403 until.
	webIn2 := func(token string) int {
		code, _ := apiDo(t, "GET", "http://"+dc2.clients[0].addr+"/v1/catalog/service/web", token, "")
		return code
	}

	tok, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Description: "deployer", Policies: []*consul.ACLTokenPolicyLink{{Name: "web-read"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// How soon: BenchmarkACLReplication.
	eventually.True(t, 10*time.Second, "the token made in dc1 works on dc2's client", func() bool { return webIn2(tok.SecretID) == 200 })
	// Through dc1's client with the consul/api client's Datacenter: dc2
	// checks it against its own, replicated, tokens.
	c1 := tokenClient(t, dc1.clients[0].addr, tok.SecretID)
	if es, _, err := c1.Catalog().Service("web", "", &consul.QueryOptions{Datacenter: "dc2"}); err != nil || len(es) != 1 {
		t.Errorf("dc2's web through dc1 with a token made in dc1: %v, %v", es, err)
	}
	c2 := tokenClient(t, dc2.clients[0].addr, tok.SecretID)
	if _, err := c2.KV().Put(&consul.KVPair{Key: "app/x", Value: []byte("1")}, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a KV write in dc2 before the policy allows it: %v, want 403", err)
	}

	t.Run("policy update", func(t *testing.T) {
		pol.Rules = `service_prefix "web" { policy = "read" }` + "\n" + `key_prefix "app/" { policy = "write" }`
		if _, _, err := r1.ACL().PolicyUpdate(pol, nil); err != nil {
			t.Fatal(err)
		}
		eventually.NoError(t, 10*time.Second, "the token may write app/ in dc2", func() error {
			_, err := c2.KV().Put(&consul.KVPair{Key: "app/x", Value: []byte("1")}, nil)
			return err
		})
	})

	t.Run("policy and global token written through dc2", func(t *testing.T) {
		// Forwarded to dc1, and replicated back before the answer leaves.
		p2, _, err := r2.ACL().PolicyCreate(&consul.ACLPolicy{Name: "from-dc2", Rules: `node_prefix "" { policy = "read" }`}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _, err := r1.ACL().PolicyReadByName("from-dc2", nil); err != nil || got == nil || got.ID != p2.ID {
			t.Errorf("the policy written through dc2, in dc1: %+v, %v", got, err)
		}
		if got, _, err := r2.ACL().PolicyRead(p2.ID, nil); err != nil || got == nil {
			t.Errorf("the policy written through dc2, read in dc2 right after: %+v, %v", got, err)
		}
		g, _, err := r2.ACL().TokenCreate(&consul.ACLToken{Description: "global from dc2", Policies: []*consul.ACLTokenPolicyLink{{ID: p2.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _, err := r1.ACL().TokenRead(g.AccessorID, nil); err != nil || got == nil || got.Local {
			t.Errorf("the global token made through dc2, in dc1: %+v, %v", got, err)
		}
		if _, _, err := tokenClient(t, dc2.clients[0].addr, g.SecretID).Catalog().Nodes(nil); err != nil {
			t.Errorf("the global token made through dc2, used in dc2 right after: %v", err)
		}
	})

	t.Run("write through dc2 that changes nothing", func(t *testing.T) {
		// dc1's index moves with a KV write; then a delete through dc2 of
		// a token nobody has changes no ACL object: its answer names an
		// index past dc2's last round, which dc2 fetches at once rather
		// than hold the answer for its 5 s bound.
		if _, err := r1.KV().Put(&consul.KVPair{Key: "moves-the-index", Value: []byte("1")}, nil); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if _, err := r2.ACL().TokenDelete("0e7a2a3c-5d4c-4c38-9f3e-2a1d4c6b8e90", nil); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(began); took >= 5*time.Second {
			t.Errorf("a delete of nothing through dc2 answered after %v: held for the whole bound", took)
		}
	})

	t.Run("local token made in dc2", func(t *testing.T) {
		l, _, err := r2.ACL().TokenCreate(&consul.ACLToken{Description: "local", Local: true, Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, _, err := r2.ACL().TokenRead(l.AccessorID, nil); err != nil || got == nil || !got.Local {
			t.Errorf("the local token in dc2: %+v, %v", got, err)
		}
		if webIn2(l.SecretID) != 200 {
			t.Error("the local token does not work in dc2")
		}
		// A replication round later (a change in dc1 makes one), dc1 still
		// does not know it and dc2 still has it.
		if _, _, err := r1.ACL().PolicyCreate(&consul.ACLPolicy{Name: "a-round", Rules: `node_prefix "" { policy = "read" }`}, nil); err != nil {
			t.Fatal(err)
		}
		eventually.True(t, 10*time.Second, "the round reaches dc2", func() bool {
			p, _, err := r2.ACL().PolicyReadByName("a-round", nil)
			return err == nil && p != nil
		})
		if got, _, err := r1.ACL().TokenRead(l.AccessorID, nil); err == nil && got != nil {
			t.Errorf("dc1 has dc2's local token: %+v", got)
		}
		if code, _ := apiDo(t, "GET", "http://"+dc1.clients[0].addr+"/v1/catalog/services", l.SecretID, ""); code != http.StatusForbidden {
			t.Errorf("dc2's local token in dc1: %d, want 403", code)
		}
		if webIn2(l.SecretID) != 200 {
			t.Error("the local token stopped working in dc2 after a replication round")
		}
	})

	t.Run("delete in dc1", func(t *testing.T) {
		if _, err := r1.ACL().TokenDelete(tok.AccessorID, nil); err != nil {
			t.Fatal(err)
		}
		eventually.True(t, 10*time.Second, "the deleted token is refused in dc2", func() bool { return webIn2(tok.SecretID) == http.StatusForbidden })
		if _, _, err := c1.Catalog().Service("web", "", &consul.QueryOptions{Datacenter: "dc2"}); err == nil || !strings.Contains(err.Error(), "ACL not found") {
			t.Errorf("the deleted token through dc1 with ?dc=dc2: %v, want ACL not found", err)
		}
	})

	t.Run("replication status", func(t *testing.T) {
		st, _, err := r2.ACL().Replication(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Enabled || !st.Running || st.SourceDatacenter != "dc1" || st.ReplicationType != "tokens" ||
			st.ReplicatedIndex == 0 || st.ReplicatedRoleIndex == 0 || st.ReplicatedTokenIndex == 0 || st.LastSuccess.IsZero() || st.LastErrorMessage != "" {
			t.Errorf("dc2's replication status: %+v", st)
		}
		st1, _, err := r1.ACL().Replication(nil)
		if err != nil || st1.Enabled || st1.Running {
			t.Errorf("dc1's replication status: %+v, %v; want not enabled, as Consul's primary", st1, err)
		}
		// Through dc1 with the client's Datacenter.
		if st, _, err := r1.ACL().Replication(&consul.QueryOptions{Datacenter: "dc2"}); err != nil || st.SourceDatacenter != "dc1" || !st.Running {
			t.Errorf("dc2's replication status through dc1: %+v, %v", st, err)
		}
	})

	t.Run("bootstrap in dc2", func(t *testing.T) {
		_, _, err := tokenClient(t, dc2.clients[0].addr, "").ACL().Bootstrap()
		var se consul.StatusError
		if !errors.As(err, &se) || se.Code != 500 || !strings.Contains(se.Body, "ACL support disabled") {
			t.Errorf("bootstrap in the secondary: %v, want Consul's 500 ACL support disabled", err)
		}
	})
}

// leads reports whether the server whose API is at addr leads its
// datacenter (consul info's consul.leader).
func leads(t *testing.T, addr string) bool {
	self, err := tokenClient(t, addr, "root-tok").Agent().Self()
	if err != nil {
		return false
	}
	c, _ := self["Stats"]["consul"].(map[string]any)
	return c != nil && c["leader"] == "true"
}

// TestACLReplicationLeaderChange: dc2 has three servers; its leader is
// killed, and the new leader replicates: a token made in dc1 afterwards
// works in dc2, one deleted in dc1 stops working, and the status is the new
// leader's.
func TestACLReplicationLeaderChange(t *testing.T) {
	needBinary(t)
	dc1, dc2 := replicatedDCs(t, "-bootstrap-expect", "3")
	second := []string{"-datacenter", "dc2", "-bind", "127.0.0.1", "-server", "-bootstrap-expect", "3", "-server-port", "0",
		"-retry-join", dc2.server.gossip, "-retry-interval", "1s", "-retry-join-wan", dc1.server.wan}
	// dc2's agents had the ACL files; the two more servers get the same.
	files := aclFilesOf(t, dc2.server)
	s2 := []*proc{dc2.server}
	for _, n := range []string{"s2-dc2", "s3-dc2"} {
		s2 = append(s2, startAgent(t, append(append(slices.Clone(second), "-node", n, "-data-dir", tempDataDir(t)), files...)...))
	}
	r1 := tokenClient(t, dc1.clients[0].addr, "root-tok")
	pol, _, err := r1.ACL().PolicyCreate(&consul.ACLPolicy{Name: "nodes", Rules: `node_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	old, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	works := func(addr, secret string) bool {
		code, _ := apiDo(t, "GET", "http://"+addr+"/v1/catalog/nodes", secret, "")
		return code == 200
	}
	var leader *proc
	eventually.True(t, 30*time.Second, "dc2 has a leader that replicated the token", func() bool {
		for _, s := range s2 {
			if leads(t, s.addr) && works(s.addr, old.SecretID) {
				leader = s
				return true
			}
		}
		return false
	})
	leader.stop(syscall.SIGKILL)
	var rest []*proc
	for _, s := range s2 {
		if s != leader {
			rest = append(rest, s)
		}
	}
	began := time.Now()
	var next *proc
	eventually.True(t, 30*time.Second, "dc2 elects another leader", func() bool {
		for _, s := range rest {
			if leads(t, s.addr) {
				next = s
				return true
			}
		}
		return false
	})
	t.Logf("dc2 elected a new leader %v after its leader was killed", time.Since(began).Round(time.Millisecond))
	fresh, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.ACL().TokenDelete(old.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	made := time.Now()
	for _, s := range rest {
		eventually.True(t, 20*time.Second, "the new leader replicates a token made after the change", func() bool {
			return works(s.addr, fresh.SecretID) && !works(s.addr, old.SecretID)
		})
	}
	t.Logf("a token made in dc1 after the change worked on both of dc2's servers %v later", time.Since(made).Round(time.Millisecond))
	st, _, err := tokenClient(t, next.addr, "root-tok").ACL().Replication(nil)
	if err != nil || !st.Running || st.SourceDatacenter != "dc1" || st.LastSuccess.IsZero() {
		t.Errorf("the new leader's replication status: %+v, %v", st, err)
	}
}

// aclFilesOf answers the -config-file flags p was started with.
func aclFilesOf(t *testing.T, p *proc) []string {
	t.Helper()
	var out []string
	args := p.cmd.Args
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-config-file" {
			out = append(out, args[i], args[i+1])
		}
	}
	if len(out) == 0 {
		t.Fatal("no config files")
	}
	return out
}

// TestACLReplicationWANCut cuts the WAN link (iptables, as TestWANCut)
// while dc1 makes a token and deletes another: dc2 keeps the set it
// replicated last (the deleted token still works there, the new one does
// not yet), its replication status shows the error, and once the cut heals
// both changes arrive.
func TestACLReplicationWANCut(t *testing.T) {
	needBinary(t)
	fc := &faultCluster{t: t, prefix: fmt.Sprintf("127.%d.%d.", 100+os.Getpid()%100, 1+os.Getpid()/100%250)}
	var err error
	if fc.dir, err = os.MkdirTemp("", "aclrepl-cut"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(fc.dir) })
	fc.setupPartitions()
	file := func(name, body string) string {
		p := filepath.Join(fc.dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil { // the agents' uids read it
			t.Fatal(err)
		}
		return p
	}
	wanConf := file("wan.yaml", "gossip_wan: {probe_interval: 500ms, probe_timeout: 250ms, suspicion_mult: 2, gossip_interval: 100ms}\n")
	base := file("acl.yaml", "acl:\n  enabled: true\n  default_policy: deny\n  tokens: {initial_management: root-tok, agent: root-tok}\n")
	second := file("dc2.yaml", "primary_datacenter: dc1\nacl:\n  enable_token_replication: true\n  tokens: {replication: root-tok}\n")
	start := func(d *cutDC, i int, args ...string) *proc {
		data := filepath.Join(fc.dir, d.name+strconv.Itoa(i))
		if err := os.Mkdir(data, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(data, d.uids[i], d.uids[i]); err != nil {
			t.Fatal(err)
		}
		prefix := []string{"setpriv", "--reuid", strconv.Itoa(d.uids[i]), "--regid", strconv.Itoa(d.uids[i]), "--clear-groups"}
		args = append([]string{"-datacenter", d.name, "-bind", d.ips[i], "-client", d.ips[i], "-data-dir", data, "-retry-interval", "1s",
			"-config-file", base}, args...)
		if d.name == "dc2" {
			args = append(args, "-config-file", second)
		}
		p := startAgentIn(t, prefix, args...)
		t.Cleanup(func() { p.cmd.Process.Signal(syscall.SIGCONT) })
		return p
	}
	uid := 63000 + os.Getpid()%1000*10
	dcs := []*cutDC{
		{name: "dc1", ips: []string{fc.prefix + "1", fc.prefix + "2"}, uids: []int{uid, uid + 1}},
		{name: "dc2", ips: []string{fc.prefix + "11", fc.prefix + "12"}, uids: []int{uid + 2, uid + 3}},
	}
	for i, d := range dcs {
		args := []string{"-node", "s-" + d.name, "-server", "-bootstrap-expect", "1", "-server-port", "0", "-config-file", wanConf}
		if i > 0 {
			args = append(args, "-retry-join-wan", dcs[0].server.wan)
		}
		d.server = start(d, 0, args...)
		d.client = start(d, 1, "-node", "c-"+d.name, "-retry-join", d.server.gossip)
	}
	r1, r2 := tokenClient(t, dcs[0].client.addr, "root-tok"), tokenClient(t, dcs[1].client.addr, "root-tok")
	works := func(secret string) bool {
		code, _ := apiDo(t, "GET", "http://"+dcs[1].client.addr+"/v1/catalog/nodes", secret, "")
		return code == 200
	}
	var pol *consul.ACLPolicy
	eventually.NoError(t, 30*time.Second, "dc1 takes a policy", func() error {
		var err error
		pol, _, err = r1.ACL().PolicyCreate(&consul.ACLPolicy{Name: "nodes", Rules: `node_prefix "" { policy = "read" }`}, nil)
		return err
	})
	token := func() *consul.ACLToken {
		tok, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	old := token()
	eventually.True(t, 30*time.Second, "dc2 replicates dc1's token", func() bool { return works(old.SecretID) })

	for a, b := range map[int]int{0: 1, 1: 0} {
		for _, u := range dcs[a].uids {
			for _, ip := range dcs[b].ips {
				if err := iptables("-A", fc.chain+"-out", "-m", "owner", "--uid-owner", strconv.Itoa(u), "-d", ip, "-j", "DROP"); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// An answer already on its way may still cross (the cut drops what
	// each side sends to the other's addresses, and a connection's source
	// is 127.0.0.1): dc1 changes once dc2 has seen the cut.
	eventually.True(t, 30*time.Second, "dc2's replication status shows the cut", func() bool {
		st, _, err := r2.ACL().Replication(nil)
		return err == nil && st.LastErrorMessage != "" && !st.LastError.IsZero()
	})
	changed := time.Now()
	fresh := token()
	if _, err := r1.ACL().TokenDelete(old.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	var st *consul.ACLReplicationStatus
	eventually.True(t, 30*time.Second, "dc2 fails a round after dc1's changes", func() bool {
		st, _, err = r2.ACL().Replication(nil)
		return err == nil && st.LastError.After(changed.Add(time.Second)) // LastError is rounded to the second
	})
	t.Logf("dc2's replication status during the cut: %+v", st)
	if !works(old.SecretID) || works(fresh.SecretID) {
		t.Errorf("during the cut dc2 must keep the set it replicated last: the old token works %v (want true), the new one %v (want false)",
			works(old.SecretID), works(fresh.SecretID))
	}

	if err := iptables("-F", fc.chain+"-out"); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	eventually.True(t, 60*time.Second, "dc1's changes reach dc2 once the cut heals", func() bool {
		return works(fresh.SecretID) && !works(old.SecretID)
	})
	t.Logf("dc1's changes made during the cut reached dc2 %v after it healed", time.Since(began).Round(time.Millisecond))
}

// TestACLRemoteTokens: dc2 replicates policies but not tokens (no
// acl.enable_token_replication), so that, as Consul's, it asks dc1 about
// every token it does not know and keeps the answer acl.token_ttl; its
// token reads are dc1's; it makes no local tokens. With dc1 gone,
// acl.down_policy extend-cache keeps the answers it has, and a token it
// never saw gets the default policy.
func TestACLRemoteTokens(t *testing.T) {
	needBinary(t)
	dc1, dc2 := secondaryDC(t, "primary_datacenter: dc1\nacl:\n  token_ttl: 1s\n  tokens: {replication: root-tok}\n")
	r1, r2 := tokenClient(t, dc1.clients[0].addr, "root-tok"), tokenClient(t, dc2.clients[0].addr, "root-tok")
	var pol *consul.ACLPolicy
	eventually.NoError(t, 30*time.Second, "dc1 takes a policy", func() error {
		var err error
		pol, _, err = r1.ACL().PolicyCreate(&consul.ACLPolicy{Name: "nodes", Rules: `node_prefix "" { policy = "read" }`}, nil)
		return err
	})
	eventually.True(t, 10*time.Second, "dc2 replicates the policy", func() bool {
		p, _, err := r2.ACL().PolicyRead(pol.ID, nil)
		return err == nil && p != nil
	})
	token := func() *consul.ACLToken {
		tok, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	nodesIn2 := func(secret string) (int, string) {
		return apiDo(t, "GET", "http://"+dc2.clients[0].addr+"/v1/catalog/nodes", secret, "")
	}
	tok := token()
	if code, body := nodesIn2(tok.SecretID); code != 200 {
		t.Fatalf("a token of dc1 on dc2's client, asked of dc1: %d %s", code, body)
	}
	if got, _, err := r2.ACL().TokenRead(tok.AccessorID, nil); err != nil || got == nil || got.Description != tok.Description {
		t.Errorf("a token read in dc2 is dc1's: %+v, %v", got, err)
	}
	if _, _, err := r2.ACL().TokenCreate(&consul.ACLToken{Local: true}, nil); err == nil || !strings.Contains(err.Error(), "Local tokens are disabled") {
		t.Errorf("a local token in a secondary without token replication: %v, want Consul's Local tokens are disabled", err)
	}
	if code, body := nodesIn2("00000000-0000-4000-8000-00000000000f"); code != http.StatusForbidden || !strings.Contains(body, "ACL not found") {
		t.Errorf("a token nobody knows: %d %s", code, body)
	}
	// Deleted in dc1: refused in dc2 once the answer kept expires.
	if _, err := r1.ACL().TokenDelete(tok.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "the deleted token is refused in dc2", func() bool {
		code, _ := nodesIn2(tok.SecretID)
		return code == http.StatusForbidden
	})

	// dc1 goes away: what dc2 has kept still works past its TTL; a token
	// it never saw gets the default policy (deny), not ACL not found.
	kept := token()
	if code, body := nodesIn2(kept.SecretID); code != 200 {
		t.Fatalf("a token of dc1 on dc2's client: %d %s", code, body)
	}
	unseen := token()
	dc1.server.stop(syscall.SIGKILL)
	eventually.True(t, 30*time.Second, "dc2 sees dc1 gone", func() bool {
		code, body := apiDo(t, "GET", "http://"+dc2.clients[0].addr+"/v1/catalog/nodes?dc=dc1", "root-tok", "")
		return code == http.StatusInternalServerError && strings.Contains(body, "No path")
	})
	time.Sleep(1100 * time.Millisecond) // past token_ttl
	if code, body := nodesIn2(kept.SecretID); code != 200 {
		t.Errorf("down_policy extend-cache: a token dc2 resolved before: %d %s, want 200", code, body)
	}
	if code, body := nodesIn2(unseen.SecretID); code != http.StatusForbidden || !strings.Contains(body, "Permission denied") {
		t.Errorf("down_policy extend-cache: a token dc2 never saw: %d %s, want the default policy's 403 Permission denied", code, body)
	}
}
