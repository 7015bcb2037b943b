package api_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

// mgmtACL: deny by default, one management token from the configuration.
func mgmtACL() api.ACLConfig {
	return api.ACLConfig{Enabled: true, DefaultPolicy: "deny", InitialManagement: mgmtTok}
}

const webRules = `
# deploys web*, but never web-admin
service_prefix "web" { policy = "write" }
service "web-admin" { policy = "deny" }
key_prefix "app/" {
  policy = "write"
}
`

func mustPolicy(t *testing.T, acl *consul.ACL, name, rules string) *consul.ACLPolicy {
	t.Helper()
	p, _, err := acl.PolicyCreate(&consul.ACLPolicy{Name: name, Description: name + " policy", Rules: rules}, nil)
	if err != nil {
		t.Fatalf("PolicyCreate %s: %v", name, err)
	}
	return p
}

func mustToken(t *testing.T, acl *consul.ACL, desc string, policies ...*consul.ACLLink) *consul.ACLToken {
	t.Helper()
	tok, _, err := acl.TokenCreate(&consul.ACLToken{Description: desc, Policies: policies}, nil)
	if err != nil {
		t.Fatalf("TokenCreate %s: %v", desc, err)
	}
	return tok
}

func isACLNotFound(err error) bool {
	return err != nil && strings.Contains(err.Error(), "403") && strings.Contains(err.Error(), "ACL not found")
}

func TestACLAPIPolicyAndToken(t *testing.T) {
	a := startACLAgent(t, mgmtACL())
	acl := a.client(t, mgmtTok).ACL()

	p := mustPolicy(t, acl, "web-deploy", webRules)
	if p.ID == "" || p.Name != "web-deploy" || p.Rules != webRules || p.CreateIndex == 0 || p.ModifyIndex < p.CreateIndex {
		t.Fatalf("created policy: %+v", p)
	}
	if got, _, err := acl.PolicyRead(p.ID, nil); err != nil || got.Name != "web-deploy" || got.Rules != webRules {
		t.Errorf("PolicyRead: %+v %v", got, err)
	}
	if got, _, err := acl.PolicyReadByName("web-deploy", nil); err != nil || got == nil || got.ID != p.ID {
		t.Errorf("PolicyReadByName: %+v %v", got, err)
	}
	if got, _, err := acl.PolicyReadByName("nope", nil); err != nil || got != nil {
		t.Errorf("PolicyReadByName of an unknown name: %+v %v, want nil, nil", got, err)
	}

	// Linked by name; the answer shows the ID too.
	tok := mustToken(t, acl, "web deployer", &consul.ACLLink{Name: "web-deploy"})
	if len(tok.AccessorID) != 36 || len(tok.SecretID) != 36 || tok.AccessorID == tok.SecretID ||
		len(tok.Policies) != 1 || tok.Policies[0].ID != p.ID || tok.Policies[0].Name != "web-deploy" || tok.CreateTime.IsZero() {
		t.Fatalf("created token: %+v", tok)
	}

	web := a.client(t, tok.SecretID)
	if err := web.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web-frontend", ID: "web1"}); err != nil {
		t.Errorf("register inside the prefix: %v", err)
	}
	for _, n := range []string{"db", "web-admin"} {
		if err := web.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: n}); !isDenied(err) {
			t.Errorf("register %s: got %v, want 403 Permission denied", n, err)
		}
	}
	if _, err := web.KV().Put(&consul.KVPair{Key: "app/config", Value: []byte("1")}, nil); err != nil {
		t.Errorf("KV write inside the key prefix: %v", err)
	}
	if _, err := web.KV().Put(&consul.KVPair{Key: "other/config", Value: []byte("1")}, nil); !isDenied(err) {
		t.Errorf("KV write outside the key prefix: got %v, want denied", err)
	}

	// Token self.
	self, _, err := web.ACL().TokenReadSelf(nil)
	if err != nil || self.AccessorID != tok.AccessorID || self.SecretID != tok.SecretID || self.Description != "web deployer" {
		t.Errorf("TokenReadSelf: %+v %v", self, err)
	}
	if _, _, err := a.client(t, "").ACL().TokenReadSelf(nil); !isACLNotFound(err) && !isDenied(err) {
		t.Errorf("TokenReadSelf without a token: %v", err)
	}

	// A non-management token may not manage ACLs.
	if _, _, err := web.ACL().TokenCreate(&consul.ACLToken{Description: "escalate"}, nil); !isDenied(err) {
		t.Errorf("web token creates a token: got %v, want denied", err)
	}
	if _, _, err := web.ACL().PolicyCreate(&consul.ACLPolicy{Name: "all", Rules: `service_prefix "" { policy = "write" }`}, nil); !isDenied(err) {
		t.Errorf("web token creates a policy: got %v, want denied", err)
	}
	if _, _, err := web.ACL().TokenList(nil); !isDenied(err) {
		t.Errorf("web token lists tokens: got %v, want denied", err)
	}

	// Update the token's policies: the effect is immediate.
	ro := mustPolicy(t, acl, "read-all", `{"service_prefix": {"": {"policy": "read"}}, "key_prefix": {"": {"policy": "read"}}}`)
	upd, _, err := acl.TokenUpdate(&consul.ACLToken{AccessorID: tok.AccessorID, Description: "now read only", Policies: []*consul.ACLLink{{ID: ro.ID}}}, nil)
	if err != nil || upd.SecretID != tok.SecretID || len(upd.Policies) != 1 || upd.Policies[0].Name != "read-all" {
		t.Fatalf("TokenUpdate: %+v %v", upd, err)
	}
	if err := web.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web-2"}); !isDenied(err) {
		t.Errorf("register after the update: got %v, want denied", err)
	}
	if kv, _, err := web.KV().Get("app/config", nil); err != nil || kv == nil || string(kv.Value) != "1" {
		t.Errorf("KV read after the update: %+v %v", kv, err)
	}

	// Update a policy: every token linked to it changes at once.
	ro.Rules = `service_prefix "" { policy = "write" }`
	if _, _, err := acl.PolicyUpdate(ro, nil); err != nil {
		t.Fatalf("PolicyUpdate: %v", err)
	}
	if err := web.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web-2"}); err != nil {
		t.Errorf("register after the policy update: %v", err)
	}

	// Delete: the token no longer works.
	if _, err := acl.TokenDelete(tok.AccessorID, nil); err != nil {
		t.Fatalf("TokenDelete: %v", err)
	}
	if _, err := web.Agent().Services(); !isACLNotFound(err) {
		t.Errorf("a deleted token: got %v, want 403 ACL not found", err)
	}
	if _, _, err := acl.TokenRead(tok.AccessorID, nil); !isACLNotFound(err) {
		t.Errorf("TokenRead of a deleted token: got %v", err)
	}

	// Delete a policy: links to it are dropped.
	t2 := mustToken(t, acl, "two", &consul.ACLLink{ID: ro.ID}, &consul.ACLLink{ID: p.ID})
	if _, err := acl.PolicyDelete(ro.ID, nil); err != nil {
		t.Fatalf("PolicyDelete: %v", err)
	}
	got, _, err := acl.TokenRead(t2.AccessorID, nil)
	if err != nil || len(got.Policies) != 1 || got.Policies[0].ID != p.ID {
		t.Errorf("token after its policy was deleted: %+v %v", got, err)
	}
	if _, _, err := acl.PolicyRead(ro.ID, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("PolicyRead of a deleted policy: %v", err)
	}
}

func TestACLAPIReadOnlyAndList(t *testing.T) {
	a := startACLAgent(t, api.ACLConfig{Enabled: true, DefaultPolicy: "deny", InitialManagement: mgmtTok,
		Tokens: []api.ACLToken{{Secret: webTok, Description: "from the config", Rules: api.ACLRules{ServicePrefix: map[string]string{"web": "write"}}}}})
	acl := a.client(t, mgmtTok).ACL()
	aclRead := mustPolicy(t, acl, "acl-read", `acl = "read"`)
	reader := mustToken(t, acl, "auditor", &consul.ACLLink{ID: aclRead.ID})
	rc := a.client(t, reader.SecretID).ACL()

	list, _, err := rc.TokenList(nil)
	if err != nil {
		t.Fatalf("TokenList with acl read: %v", err)
	}
	if len(list) != 3 {
		t.Fatalf("TokenList: %d tokens, want 3 (management, config, auditor)", len(list))
	}
	var mgmtSeen bool
	for _, e := range list {
		if e.SecretID != "<hidden>" {
			t.Errorf("acl read sees the secret of %s", e.Description)
		}
		if len(e.Policies) == 1 && e.Policies[0].Name == "global-management" {
			mgmtSeen = true
		}
	}
	if !mgmtSeen {
		t.Errorf("the configuration's management token is not listed with global-management: %+v", list)
	}
	if tr, _, err := rc.TokenRead(reader.AccessorID, nil); err != nil || tr.SecretID != "<hidden>" {
		t.Errorf("TokenRead with acl read: %+v %v", tr, err)
	}
	if _, _, err := rc.TokenCreate(&consul.ACLToken{}, nil); !isDenied(err) {
		t.Errorf("acl read creates a token: got %v, want denied", err)
	}
	if ps, _, err := rc.PolicyList(nil); err != nil || len(ps) != 2 {
		t.Errorf("PolicyList: %+v %v, want global-management and acl-read", ps, err)
	}

	// Management sees secrets, and can filter by policy.
	list, _, err = acl.TokenListFiltered(consul.ACLTokenFilterOptions{Policy: aclRead.ID}, nil)
	if err != nil || len(list) != 1 || list[0].SecretID != reader.SecretID {
		t.Errorf("TokenListFiltered as management: %+v %v", list, err)
	}

	// The configuration's tokens are read-only.
	all, _, _ := acl.TokenList(nil)
	for _, e := range all {
		if e.Description != "from the config" {
			continue
		}
		if _, _, err := acl.TokenUpdate(&consul.ACLToken{AccessorID: e.AccessorID, Description: "x"}, nil); err == nil || !strings.Contains(err.Error(), "configuration file") {
			t.Errorf("update a config token: %v", err)
		}
		if _, err := acl.TokenDelete(e.AccessorID, nil); err == nil || !strings.Contains(err.Error(), "configuration file") {
			t.Errorf("delete a config token: %v", err)
		}
	}
	if _, _, err := acl.PolicyUpdate(&consul.ACLPolicy{ID: "00000000-0000-0000-0000-000000000001", Name: "global-management"}, nil); err == nil {
		t.Error("the builtin policy was changed")
	}
	// A token linked to global-management is a management token.
	root := mustToken(t, acl, "root", &consul.ACLLink{Name: "global-management"})
	if _, _, err := a.client(t, root.SecretID).ACL().TokenCreate(&consul.ACLToken{}, nil); err != nil {
		t.Errorf("a global-management token creates a token: %v", err)
	}
	// Given IDs are kept; a duplicate is refused.
	const acc, sec = "6a1253d2-1785-24fd-91c2-f8e78c745511", "45a3bd52-07c7-47a4-52fd-0745e0cfe967"
	if got, _, err := acl.TokenCreate(&consul.ACLToken{AccessorID: acc, SecretID: sec}, nil); err != nil || got.AccessorID != acc || got.SecretID != sec {
		t.Errorf("TokenCreate with IDs: %+v %v", got, err)
	}
	if _, _, err := acl.TokenCreate(&consul.ACLToken{SecretID: sec}, nil); err == nil || !strings.Contains(err.Error(), "SecretID is already in use") {
		t.Errorf("a duplicate SecretID: %v", err)
	}
	if _, _, err := acl.TokenCreate(&consul.ACLToken{Policies: []*consul.ACLLink{{Name: "nope"}}}, nil); err == nil || !strings.Contains(err.Error(), "cannot find policy nope") {
		t.Errorf("a link to an unknown policy: %v", err)
	}
	// No token may delete itself.
	if _, err := a.client(t, root.SecretID).ACL().TokenDelete(root.AccessorID, nil); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a token deletes itself: %v", err)
	}
}

func TestACLAPIBadRules(t *testing.T) {
	a := startACLAgent(t, mgmtACL())
	acl := a.client(t, mgmtTok).ACL()
	for _, c := range []struct{ rules, want string }{
		{`service_prefix "web" { policy = "all" }`, `service_prefix "web": policy "all"`},
		{`servic "web" { policy = "read" }`, `unknown rule "servic"`},
		{`key_prefix "" { policy = "list" }`, `not supported`},
		{`service "x" { policy = "read" `, `line 1`},
		{"operator = \"read\"\nnode_prefix \"\" { polcy = \"read\" }", `line 2: node_prefix "": unknown key "polcy"`},
		{`{"service": {"x": {"policy": "sometimes"}}}`, `service "x": policy "sometimes"`},
		{`{"servce": "read"}`, `unknown rule "servce"`},
	} {
		_, _, err := acl.PolicyCreate(&consul.ACLPolicy{Name: "bad", Rules: c.rules}, nil)
		if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("rules %q: got %v, want 400 naming %s", c.rules, err, c.want)
		}
	}
	if _, _, err := acl.PolicyCreate(&consul.ACLPolicy{Name: "bad name!"}, nil); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("a bad name: %v", err)
	}
	mustPolicy(t, acl, "dup", "")
	if _, _, err := acl.PolicyCreate(&consul.ACLPolicy{Name: "dup"}, nil); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("a duplicate name: %v", err)
	}
	if _, _, err := acl.TokenCreate(&consul.ACLToken{ExpirationTTL: time.Hour}, nil); err == nil || !strings.Contains(err.Error(), "ExpirationTTL") {
		t.Errorf("a token with an expiry: %v", err)
	}
}

// The ACL objects live in the KV store's reserved namespace: /v1/kv neither
// shows nor writes them, and a recursive delete of everything spares them.
func TestACLAPIReservedKV(t *testing.T) {
	a := startACLAgent(t, mgmtACL())
	c := a.client(t, mgmtTok)
	tok := mustToken(t, c.ACL(), "survivor", &consul.ACLLink{Name: "global-management"})
	c.KV().Put(&consul.KVPair{Key: "app/x", Value: []byte("1")}, nil)

	keys, _, err := c.KV().Keys("", "", nil)
	if err != nil || len(keys) != 1 || keys[0] != "app/x" {
		t.Errorf("Keys: %v %v", keys, err)
	}
	if ks, _, _ := c.KV().Keys("_pier/", "", nil); len(ks) != 0 {
		t.Errorf("Keys under _pier/: %v", ks)
	}
	if _, err := c.KV().Put(&consul.KVPair{Key: "_pier/acl/token/x", Value: []byte("{}")}, nil); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("a KV write under _pier/: %v", err)
	}
	if _, err := c.KV().DeleteTree("", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.client(t, tok.SecretID).ACL().TokenReadSelf(nil); err != nil {
		t.Errorf("the token after deleting every key: %v", err)
	}
}

// With ACLs off, Consul answers 401 "ACL support disabled".
func TestACLAPIDisabled(t *testing.T) {
	ag := startAgent(t)
	for _, c := range []struct{ method, path string }{
		{"PUT", "/v1/acl/token"}, {"GET", "/v1/acl/tokens"}, {"GET", "/v1/acl/policies"}, {"GET", "/v1/acl/token/self"},
	} {
		req, _ := http.NewRequest(c.method, ag.base+c.path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || strings.TrimSpace(string(b)) != "ACL support disabled" {
			t.Errorf("%s %s: %d %q", c.method, c.path, resp.StatusCode, b)
		}
	}
}

// Tokens made through the API live in the data dir: a new agent on the
// same directory knows them.
func TestACLAPIPersisted(t *testing.T) {
	dir := t.TempDir()
	_, a, stop := startStoreAgent(t, "node1", dir)
	acl := a.ACL()
	mustPolicy(t, acl, "web", `service_prefix "web" { policy = "write" }`)
	tok := mustToken(t, acl, "web", &consul.ACLLink{Name: "web"})
	stop()

	_, b, _ := startStoreAgent(t, "node1", dir)
	cfg := consul.DefaultConfig()
	cfg.Address, cfg.Token = b.addr, tok.SecretID
	c, _ := consul.NewClient(cfg)
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web-x"}); err != nil {
		t.Errorf("the token after a restart: %v", err)
	}
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "db"}); !isDenied(err) {
		t.Errorf("the token after a restart, outside its prefix: %v", err)
	}
}

// storeAgent is an agent whose registry the test holds: in the data dir
// when dir is set.
type storeAgent struct {
	addr string
	c    *consul.Client // with the management token
}

func (p *storeAgent) ACL() *consul.ACL { return p.c.ACL() }

// startStoreAgent serves an agent with ACLs on; stop (also run at the end
// of the test) waits for it to shut down.
func startStoreAgent(t *testing.T, node, dir string) (reg *registry.Registry, a *storeAgent, stop func()) {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = node
	rcfg.Address = "127.0.0.1"
	rcfg.DataDir = dir
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	acfg := api.DefaultConfig()
	acfg.Registry = reg
	acfg.ACL = mgmtACL()
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	cfg := consul.DefaultConfig()
	cfg.Address, cfg.Token = ln.Addr().String(), mgmtTok
	c, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return reg, &storeAgent{addr: ln.Addr().String(), c: c}, stop
}

// With default_policy allow, anonymous requests may do everything but
// manage ACLs, as in Consul: otherwise anyone could mint a management token.
func TestACLAPIDefaultAllowKeepsACLsClosed(t *testing.T) {
	a := startACLAgent(t, api.ACLConfig{Enabled: true, DefaultPolicy: "allow", InitialManagement: mgmtTok})
	anon := a.client(t, "")
	if err := anon.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web"}); err != nil {
		t.Errorf("anonymous register under allow: %v", err)
	}
	if _, _, err := anon.ACL().TokenCreate(&consul.ACLToken{Policies: []*consul.ACLLink{{Name: "global-management"}}}, nil); !isDenied(err) {
		t.Errorf("anonymous TokenCreate under allow: got %v, want denied", err)
	}
	if _, _, err := anon.ACL().PolicyList(nil); !isDenied(err) {
		t.Errorf("anonymous PolicyList under allow: got %v, want denied", err)
	}
}

// Two agents whose registries exchange KV state, as gossip does: a token
// and its policy made on one work on the other, and so does a delete.
func TestACLAPIReplicated(t *testing.T) {
	regA, a, _ := startStoreAgent(t, "node1", "")
	regB, b, _ := startStoreAgent(t, "node2", "")
	acl := a.ACL()
	mustPolicy(t, acl, "web", `service_prefix "web" { policy = "write" }`)
	tok := mustToken(t, acl, "web", &consul.ACLLink{Name: "web"})
	regB.Merge(regA.KVState())

	cfg := consul.DefaultConfig()
	cfg.Address, cfg.Token = b.addr, tok.SecretID
	onB, _ := consul.NewClient(cfg)
	if err := onB.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web-b"}); err != nil {
		t.Errorf("the token on the other agent: %v", err)
	}
	if got, _, err := b.ACL().TokenRead(tok.AccessorID, nil); err != nil || got.Policies[0].Name != "web" {
		t.Errorf("TokenRead on the other agent: %+v %v", got, err)
	}
	if _, err := acl.TokenDelete(tok.AccessorID, nil); err != nil {
		t.Fatal(err)
	}
	regB.Merge(regA.KVState()) // the tombstone
	if err := onB.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web-c"}); !isACLNotFound(err) {
		t.Errorf("the deleted token on the other agent: %v", err)
	}
}
