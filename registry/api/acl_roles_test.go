package api_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"
)

// Roles as consul acl role and Consul's clients use them: a token linked to
// a role gets the role's policies and identities, and changing or deleting
// the role changes every token that links to it.
func TestACLRoles(t *testing.T) {
	a := startACLAgent(t, mgmtACL())
	acl := a.client(t, mgmtTok).ACL()

	kv := mustPolicy(t, acl, "kv-app", `key_prefix "app/" { policy = "write" }`)
	role, _, err := acl.RoleCreate(&consul.ACLRole{
		Name: "deployer", Description: "ships web",
		Policies:          []*consul.ACLRolePolicyLink{{Name: "kv-app"}},
		ServiceIdentities: []*consul.ACLServiceIdentity{{ServiceName: "web"}},
		NodeIdentities:    []*consul.ACLNodeIdentity{{NodeName: "node1", Datacenter: "dc1"}},
	}, nil)
	if err != nil {
		t.Fatalf("RoleCreate: %v", err)
	}
	if len(role.ID) != 36 || role.Name != "deployer" || len(role.Policies) != 1 || role.Policies[0].ID != kv.ID ||
		role.Policies[0].Name != "kv-app" || len(role.ServiceIdentities) != 1 || role.CreateIndex == 0 {
		t.Fatalf("created role: %+v", role)
	}
	if got, _, err := acl.RoleRead(role.ID, nil); err != nil || got == nil || got.Name != "deployer" {
		t.Errorf("RoleRead: %+v %v", got, err)
	}
	if got, _, err := acl.RoleReadByName("deployer", nil); err != nil || got == nil || got.ID != role.ID {
		t.Errorf("RoleReadByName: %+v %v", got, err)
	}
	if got, _, err := acl.RoleRead("8f1e3b5c-0000-4000-8000-000000000000", nil); err != nil || got != nil {
		t.Errorf("RoleRead of an unknown ID: %+v %v, want nil, nil", got, err)
	}

	tok, _, err := acl.TokenCreate(&consul.ACLToken{Description: "ci", Roles: []*consul.ACLTokenRoleLink{{Name: "deployer"}}}, nil)
	if err != nil {
		t.Fatalf("TokenCreate with a role: %v", err)
	}
	if len(tok.Roles) != 1 || tok.Roles[0].ID != role.ID || tok.Roles[0].Name != "deployer" {
		t.Fatalf("token's roles: %+v", tok.Roles)
	}
	c := a.client(t, tok.SecretID)
	if _, err := c.KV().Put(&consul.KVPair{Key: "app/v", Value: []byte("1")}, nil); err != nil {
		t.Errorf("the role's policy: KV write under app/: %v", err)
	}
	if _, err := c.KV().Put(&consul.KVPair{Key: "other", Value: []byte("1")}, nil); err == nil {
		t.Error("KV write outside app/ allowed")
	}
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web", ID: "web1"}); err != nil {
		t.Errorf("the role's service identity: registering web: %v", err)
	}
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "api"}); err == nil {
		t.Error("the service identity web let the token register api")
	}
	if svcs, _, err := c.Catalog().Services(nil); err != nil || len(svcs) == 0 {
		t.Errorf("a service identity reads every service: %v %v", svcs, err)
	}
	if err := c.Agent().CheckRegister(&consul.AgentCheckRegistration{Name: "disk", AgentServiceCheck: consul.AgentServiceCheck{TTL: "1m"}}); err != nil {
		t.Errorf("the role's node identity: a node check: %v", err)
	}

	// Listing filters by policy (roles) and by role (tokens).
	var roles []consul.ACLRole
	getJSON(t, a.base+"/v1/acl/roles?policy="+kv.ID, &roles)
	if len(roles) != 1 || roles[0].ID != role.ID {
		t.Errorf("roles linking kv-app: %+v", roles)
	}
	getJSON(t, a.base+"/v1/acl/roles?policy=00000000-0000-4000-8000-000000000000", &roles)
	if len(roles) != 0 {
		t.Errorf("roles linking no such policy: %+v", roles)
	}
	var toks []consul.ACLTokenListEntry
	getJSON(t, a.base+"/v1/acl/tokens?role="+role.ID, &toks)
	if len(toks) != 1 || toks[0].AccessorID != tok.AccessorID {
		t.Errorf("tokens linking deployer: %+v", toks)
	}

	// The role changes, and so does what its token may do.
	role.Policies = nil
	if _, _, err := acl.RoleUpdate(role, nil); err != nil {
		t.Fatalf("RoleUpdate: %v", err)
	}
	if _, err := c.KV().Put(&consul.KVPair{Key: "app/v", Value: []byte("2")}, nil); err == nil {
		t.Error("KV write allowed after the role lost its policy")
	}
	if _, err := acl.RoleDelete(role.ID, nil); err != nil {
		t.Fatalf("RoleDelete: %v", err)
	}
	if got, _, err := acl.TokenRead(tok.AccessorID, nil); err != nil || len(got.Roles) != 0 {
		t.Errorf("token after its role was deleted: %+v %v", got, err)
	}
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web", ID: "web2"}); err == nil {
		t.Error("registering web allowed after the role was deleted")
	}
}

// Identities straight on a token, and limited to a datacenter.
func TestACLTokenIdentities(t *testing.T) {
	a := startACLAgent(t, mgmtACL())
	acl := a.client(t, mgmtTok).ACL()
	tok, _, err := acl.TokenCreate(&consul.ACLToken{
		ServiceIdentities: []*consul.ACLServiceIdentity{{ServiceName: "db"}, {ServiceName: "cache", Datacenters: []string{"dc2"}}},
		NodeIdentities:    []*consul.ACLNodeIdentity{{NodeName: "node1", Datacenter: "dc2"}},
	}, nil)
	if err != nil {
		t.Fatalf("TokenCreate with identities: %v", err)
	}
	if len(tok.ServiceIdentities) != 2 || len(tok.NodeIdentities) != 1 {
		t.Fatalf("token's identities: %+v %+v", tok.ServiceIdentities, tok.NodeIdentities)
	}
	c := a.client(t, tok.SecretID)
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "db"}); err != nil {
		t.Errorf("service identity db: %v", err)
	}
	if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "cache"}); err == nil {
		t.Error("a service identity for dc2 granted write in dc1")
	}
	if err := c.Agent().CheckRegister(&consul.AgentCheckRegistration{Name: "disk", AgentServiceCheck: consul.AgentServiceCheck{TTL: "1m"}}); err == nil {
		t.Error("a node identity for dc2 granted node write in dc1")
	}
	// A policy valid in other datacenters only grants nothing here, as in
	// Consul.
	p, _, err := acl.PolicyCreate(&consul.ACLPolicy{Name: "elsewhere", Rules: `key_prefix "" { policy = "write" }`, Datacenters: []string{"dc2"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := acl.TokenCreate(&consul.ACLToken{Policies: []*consul.ACLLink{{ID: p.ID}}}, nil)
	if err != nil || len(other.Policies) != 1 {
		t.Fatalf("TokenCreate: %+v %v", other, err)
	}
	if _, err := a.client(t, other.SecretID).KV().Put(&consul.KVPair{Key: "k", Value: []byte("1")}, nil); err == nil {
		t.Error("a policy for dc2 granted a KV write in dc1")
	}
	// The clone keeps the identities.
	clone, _, err := acl.TokenClone(tok.AccessorID, "copy", nil)
	if err != nil || len(clone.ServiceIdentities) != 2 || len(clone.NodeIdentities) != 1 {
		t.Errorf("TokenClone: %+v %v", clone, err)
	}
}

func TestACLRoleErrors(t *testing.T) {
	a := startACLAgent(t, mgmtACL())
	acl := a.client(t, mgmtTok).ACL()
	if _, _, err := acl.RoleCreate(&consul.ACLRole{Name: "ops"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		role consul.ACLRole
		want string
	}{
		{consul.ACLRole{}, "no Name"},
		{consul.ACLRole{Name: "bad name!"}, "Name"},
		{consul.ACLRole{Name: "ops"}, "already exists"},
		{consul.ACLRole{Name: "r", Policies: []*consul.ACLRolePolicyLink{{Name: "nope"}}}, "cannot find policy nope"},
		{consul.ACLRole{Name: "r", ServiceIdentities: []*consul.ACLServiceIdentity{{ServiceName: "Web!"}}}, `Service identity "Web!"`},
		{consul.ACLRole{Name: "r", ServiceIdentities: []*consul.ACLServiceIdentity{{}}}, "missing the service name"},
		{consul.ACLRole{Name: "r", NodeIdentities: []*consul.ACLNodeIdentity{{NodeName: "n1"}}}, "missing the datacenter"},
		{consul.ACLRole{Name: "r", TemplatedPolicies: []*consul.ACLTemplatedPolicy{{TemplateName: "builtin/dns"}}}, "TemplatedPolicies"},
	} {
		_, _, err := acl.RoleCreate(&c.role, nil)
		if err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("RoleCreate(%+v): %v, want a 400 naming %q", c.role, err, c.want)
		}
	}
	if _, err := acl.RoleDelete("8f1e3b5c-0000-4000-8000-000000000000", nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("RoleDelete of an unknown role: %v, want 404", err)
	}
	if _, _, err := acl.RoleUpdate(&consul.ACLRole{ID: "8f1e3b5c-0000-4000-8000-000000000000", Name: "x"}, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("RoleUpdate of an unknown role: %v, want 404", err)
	}
	if _, _, err := acl.TokenCreate(&consul.ACLToken{Roles: []*consul.ACLTokenRoleLink{{Name: "nope"}}}, nil); err == nil ||
		!strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), "cannot find role nope") {
		t.Errorf("a token linking an unknown role: %v", err)
	}
	if _, _, err := acl.TokenCreate(&consul.ACLToken{TemplatedPolicies: []*consul.ACLTemplatedPolicy{{TemplateName: "builtin/dns"}}}, nil); err == nil ||
		!strings.Contains(err.Error(), "TemplatedPolicies") {
		t.Errorf("a token with templated policies: %v", err)
	}
	if roles, _, err := acl.RoleList(nil); err != nil || len(roles) != 1 || roles[0].Name != "ops" {
		t.Errorf("nothing but ops stored after the errors: %+v %v", roles, err)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("X-Consul-Token", mgmtTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
