package main

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// replicatedDCs starts dc1, the primary, and dc2, a secondary that
// replicates dc1's ACL objects (tokens included, with root-tok, which dc1
// knows from its configuration), each a server and one client, ACLs on
// with default_policy deny; extra are more flags for dc2's agents.
func replicatedDCs(t *testing.T, extra ...string) (dc1, dc2 *datacenter) {
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
	second := file("dc2.yaml", "primary_datacenter: dc1\nacl:\n  enable_token_replication: true\n  tokens: {replication: root-tok}\n")
	dc1 = startDatacenter(t, "dc1", 1, "", "-config-file", base)
	dc2 = startDatacenter(t, "dc2", 1, dc1.server.wan, append([]string{"-config-file", base, "-config-file", second}, extra...)...)
	eventually.True(t, 30*time.Second, "the datacenters meet", func() bool {
		return slices.Equal(datacentersOf(tokenClient(t, dc2.clients[0].addr, "root-tok")), []string{"dc2", "dc1"})
	})
	return dc1, dc2
}

func tokenClient(t *testing.T, addr, token string) *consul.Client {
	t.Helper()
	c, err := consul.NewClient(&consul.Config{Address: addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestACLReplication: dc2 replicates dc1's policies, roles and global
// tokens. A token made in dc1 works in dc2 (on dc2's client, and from
// dc1's client with ?dc=dc2) within a blocking query's round trip; a
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

	t.Run("token made in dc1 works in dc2", func(t *testing.T) {
		var took []time.Duration
		for range 7 {
			tok, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Description: "reader", Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			made := time.Now()
			for webIn2(tok.SecretID) != 200 {
				if time.Since(made) > 10*time.Second {
					t.Fatalf("a token made in dc1 does not work in dc2 after %v", time.Since(made))
				}
				time.Sleep(2 * time.Millisecond)
			}
			took = append(took, time.Since(made))
		}
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		t.Logf("a token made in dc1 worked on dc2's client after %v (median of %d; min %v, max %v)", took[len(took)/2], len(took), took[0], took[len(took)-1])
	})

	tok, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Description: "deployer", Policies: []*consul.ACLTokenPolicyLink{{Name: "web-read"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "the token works on dc2's client", func() bool { return webIn2(tok.SecretID) == 200 })
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
