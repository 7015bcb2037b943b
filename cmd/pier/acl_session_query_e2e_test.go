package main

import (
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

// sessionQueryACL is an agent's acl stanza: default deny, and a token per
// rule the tests below try.
const sessionQueryACL = `
acl:
  enabled: true
  default_policy: deny
  tokens:
    initial_management: root-secret
  tokens_list:
    - secret: sess-secret
      description: may make sessions on any node
      rules: 'session_prefix "" { policy = "write" }'
    - secret: node-secret
      accessor_id: 0b6c3d7e-61a2-4c1e-9a55-2f0c8f3e7a10
      description: what sessions needed before (node write), without a session rule
      rules: 'node_prefix "" { policy = "write" }'
    - secret: other-secret
      description: sessions of another node only
      rules: 'session "other" { policy = "write" }'
    - secret: webq-secret
      accessor_id: 5f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0
      description: queries named web*
      rules: 'query_prefix "web" { policy = "write" }'
    - secret: apiq-secret
      description: reads queries named api*
      rules: 'query_prefix "api" { policy = "read" }'
    - secret: svc-secret
      description: reads the api service and nodes, no query rule
      rules: |
        service_prefix "api" { policy = "read" }
        node_prefix "" { policy = "read" }
`

// startSessionQueryAgent runs pier agent -dev (node n1) with
// sessionQueryACL and answers it with a client per token.
func startSessionQueryAgent(t *testing.T) (*proc, func(token string) *consul.Client) {
	cfg := filepath.Join(t.TempDir(), "pier.yaml")
	if err := os.WriteFile(cfg, []byte(sessionQueryACL), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "-dev", "-node", "n1", "-config-file", cfg)
	client := func(token string) *consul.Client {
		c, err := consul.NewClient(&consul.Config{Address: a.addr, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	eventually.NoError(t, 20*time.Second, "the servers take a session", func() error {
		id, _, err := client("root-secret").Session().Create(nil, nil)
		if err == nil {
			_, err = client("root-secret").Session().Destroy(id, nil)
		}
		return err
	})
	return a, client
}

// TestACLSessions: Consul's session rules, by the session's node, decide
// who makes, renews and destroys a session and who sees it; node rules
// play no part.
func TestACLSessions(t *testing.T) {
	_, client := startSessionQueryAgent(t)
	root, sess, node, other, anon := client("root-secret"), client("sess-secret"), client("node-secret"), client("other-secret"), client("")

	mine, _, err := sess.Session().Create(&consul.SessionEntry{Name: "mine", TTL: "30s"}, nil)
	if err != nil {
		t.Fatalf("a token with session_prefix \"\" write: %v", err)
	}
	rootSess, _, err := root.Session().Create(&consul.SessionEntry{Name: "root's"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		who  string
		c    *consul.Client
		want string
	}{
		{"node write without a session rule", node, "Permission denied: token with AccessorID '0b6c3d7e-61a2-4c1e-9a55-2f0c8f3e7a10' lacks permission 'session:write' on \"n1\""},
		{"session write on another node", other, "lacks permission 'session:write' on \"n1\""},
		{"anonymous", anon, "Permission denied: anonymous token lacks permission 'session:write' on \"n1\". The anonymous token is used implicitly"},
	} {
		_, _, err := c.c.Session().Create(nil, nil)
		if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("session create by %s: %v, want a 403 with %q", c.who, err, c.want)
		}
		if _, _, err := c.c.Session().Renew(mine, nil); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("session renew by %s: %v, want a 403", c.who, err)
		}
		if _, err := c.c.Session().Destroy(mine, nil); err == nil || !strings.Contains(err.Error(), "403") {
			t.Errorf("session destroy by %s: %v, want a 403", c.who, err)
		}
	}
	// Another node's rule lets a session be made there, not here.
	if _, _, err := other.Session().Create(&consul.SessionEntry{Node: "other"}, nil); err == nil || !strings.Contains(err.Error(), "Missing node registration") {
		t.Errorf("session on node other by its token: %v, want past the ACL to the catalog's refusal", err)
	}

	ids := func(c *consul.Client) []string {
		t.Helper()
		list, _, err := c.Session().List(nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range list {
			out = append(out, s.ID)
		}
		sort.Strings(out)
		return out
	}
	both := []string{mine, rootSess}
	sort.Strings(both)
	if got := ids(root); !slices.Equal(got, both) {
		t.Errorf("root lists %v, want %v", got, both)
	}
	if got := ids(sess); !slices.Equal(got, both) {
		t.Errorf("session_prefix \"\" write lists %v, want %v", got, both)
	}
	for _, c := range []struct {
		who string
		c   *consul.Client
	}{{"node write", node}, {"session on other", other}, {"anonymous", anon}} {
		if got := ids(c.c); len(got) != 0 {
			t.Errorf("%s lists %v, want none", c.who, got)
		}
		if got, _, err := c.c.Session().Info(mine, nil); err != nil || got != nil {
			t.Errorf("%s reads the session: %+v %v, want nothing", c.who, got, err)
		}
		if got, _, err := c.c.Session().Node("n1", nil); err != nil || len(got) != 0 {
			t.Errorf("%s reads n1's sessions: %d %v, want none", c.who, len(got), err)
		}
	}
	if got, _, err := sess.Session().Info(rootSess, nil); err != nil || got == nil || got.Node != "n1" {
		t.Errorf("session read of root's session: %+v %v", got, err)
	}
	if _, _, err := sess.Session().Renew(mine, nil); err != nil {
		t.Errorf("renew by its token: %v", err)
	}
	// A lock needs key write only (and the session's holder), as Consul.
	if ok, _, err := root.KV().Acquire(&consul.KVPair{Key: "locks/a", Session: mine}, nil); err != nil || !ok {
		t.Errorf("acquire with a session another token made: %v %v", ok, err)
	}
	if _, err := sess.Session().Destroy(mine, nil); err != nil {
		t.Errorf("destroy by its token: %v", err)
	}
}

// TestACLPreparedQueries: Consul's query rules govern named queries and
// templates by name; an unnamed query is anyone's who has its ID and is
// listed only to management; a query's Token is shown to management only;
// running one needs no query rule, and its answer holds what the query's
// token (else the caller's) may read.
func TestACLPreparedQueries(t *testing.T) {
	a, client := startSessionQueryAgent(t)
	root, webq, apiq, svc, anon := client("root-secret"), client("webq-secret"), client("apiq-secret"), client("svc-secret"), client("")
	if err := root.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "api1", Name: "api", Address: "10.0.0.1", Port: 80}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "api is in the catalog", func() bool {
		es, _, err := root.Health().Service("api", "", true, nil)
		return err == nil && len(es) == 1
	})

	webX, _, err := webq.PreparedQuery().Create(&consul.PreparedQueryDefinition{Name: "web-x", Service: consul.ServiceQuery{Service: "api"}}, nil)
	if err != nil {
		t.Fatalf("query_prefix web write creates web-x: %v", err)
	}
	if _, _, err := webq.PreparedQuery().Create(&consul.PreparedQueryDefinition{Name: "web-",
		Template: consul.QueryTemplate{Type: "name_prefix_match"}, Service: consul.ServiceQuery{Service: "${name.suffix}"}}, nil); err != nil {
		t.Errorf("a template named web-: %v", err)
	}
	for _, c := range []struct {
		what string
		def  consul.PreparedQueryDefinition
		want string
	}{
		{"api-x", consul.PreparedQueryDefinition{Name: "api-x", Service: consul.ServiceQuery{Service: "api"}},
			"Permission denied: token with AccessorID '5f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0' lacks permission 'query:write' on \"api-x\""},
		{"a catch-all template", consul.PreparedQueryDefinition{Template: consul.QueryTemplate{Type: "name_prefix_match"},
			Service: consul.ServiceQuery{Service: "${name.full}"}}, "lacks permission 'query:write' on \"\""},
		// The ACL check comes before the definition's, as Consul's.
		{"api-z without a service", consul.PreparedQueryDefinition{Name: "api-z"}, "lacks permission 'query:write' on \"api-z\""},
	} {
		if _, _, err := webq.PreparedQuery().Create(&c.def, nil); err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("query_prefix web write creates %s: %v, want a 403 with %q", c.what, err, c.want)
		}
	}
	apiX, _, err := root.PreparedQuery().Create(&consul.PreparedQueryDefinition{Name: "api-x", Token: "svc-secret", Service: consul.ServiceQuery{Service: "api"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Renaming web-x to api-x, or updating and deleting api-x, needs write
	// on api-x.
	if _, err := webq.PreparedQuery().Update(&consul.PreparedQueryDefinition{ID: webX, Name: "api-y", Service: consul.ServiceQuery{Service: "api"}}, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("renaming web-x to api-y: %v, want a 403", err)
	}
	if _, err := webq.PreparedQuery().Delete(apiX, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("deleting api-x with query_prefix web: %v, want a 403", err)
	}

	// An unnamed query, bound to a session: nobody's by name.
	sid, _, err := root.Session().Create(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	unnamed, _, err := anon.PreparedQuery().Create(&consul.PreparedQueryDefinition{Session: sid, Token: "svc-secret", Service: consul.ServiceQuery{Service: "api"}}, nil)
	if err != nil {
		t.Fatalf("an unnamed query by the anonymous token: %v", err)
	}

	names := func(c *consul.Client) []string {
		t.Helper()
		list, _, err := c.PreparedQuery().List(nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, q := range list {
			out = append(out, q.Name+"/"+q.Token)
		}
		sort.Strings(out)
		return out
	}
	for _, c := range []struct {
		who  string
		c    *consul.Client
		want []string
	}{
		{"root", root, []string{"/svc-secret", "api-x/svc-secret", "web-/", "web-x/"}},
		{"query_prefix web write", webq, []string{"web-/", "web-x/"}},
		{"query_prefix api read", apiq, []string{"api-x/<hidden>"}},
		{"no query rule", svc, nil},
		{"anonymous", anon, nil},
	} {
		if got := names(c.c); !slices.Equal(got, c.want) {
			t.Errorf("%s lists %v, want %v", c.who, got, c.want)
		}
	}
	if _, _, err := webq.PreparedQuery().Get(apiX, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("web reads api-x: %v, want a 403", err)
	}
	if qs, _, err := apiq.PreparedQuery().Get(apiX, nil); err != nil || len(qs) != 1 || qs[0].Token != "<hidden>" {
		t.Errorf("api read reads api-x: %+v %v, want it with its token hidden", qs, err)
	}
	// The unnamed query: anyone with its ID reads it (the token hidden) and
	// may change or delete it; explain shows it to management only.
	if qs, _, err := svc.PreparedQuery().Get(unnamed, nil); err != nil || len(qs) != 1 || qs[0].Token != "<hidden>" {
		t.Errorf("an unnamed query by ID, without query rules: %+v %v", qs, err)
	}
	if _, err := webq.PreparedQuery().Update(&consul.PreparedQueryDefinition{ID: unnamed, Session: sid, Token: "svc-secret", Service: consul.ServiceQuery{Service: "api", OnlyPassing: true}}, nil); err != nil {
		t.Errorf("updating an unnamed query by another token: %v", err)
	}
	if code, body := curl(t, "-H", "X-Consul-Token: webq-secret", "http://"+a.addr+"/v1/query/"+unnamed+"/explain"); code != 403 {
		t.Errorf("explain of an unnamed query without management: %d %s", code, body)
	}

	// Running: no query rule needed; the query's token reads the answer.
	run := func(c *consul.Client, idOrName string) (int, error) {
		r, _, err := c.PreparedQuery().Execute(idOrName, nil)
		if err != nil {
			return 0, err
		}
		return len(r.Nodes), nil
	}
	for _, c := range []struct {
		who, query string
		c          *consul.Client
		want       int
	}{
		{"anonymous", "api-x", anon, 1},   // the query's token reads api
		{"anonymous", unnamed, anon, 1},   // likewise
		{"anonymous", "web-x", anon, 0},   // no token on the query: the caller's reads nothing
		{"web", "web-x", webq, 0},         // query write is no service read
		{"svc", "web-x", svc, 1},          // service and node read, no query rule
		{"svc", "web-api", svc, 1},        // through the web- template
		{"root", "web-x", root, 1},        // management
		{"api read", "api-x", apiq, 1},    // the query's token again
		{"anonymous", "web-api", anon, 0}, // the template has no token
	} {
		if got, err := run(c.c, c.query); err != nil || got != c.want {
			t.Errorf("%s runs %s: %d instances, %v; want %d", c.who, c.query, got, err, c.want)
		}
	}
	if _, err := anon.PreparedQuery().Delete(unnamed, nil); err != nil {
		t.Errorf("deleting an unnamed query by ID: %v", err)
	}
	if _, err := webq.PreparedQuery().Delete(webX, nil); err != nil {
		t.Errorf("deleting web-x by its writer: %v", err)
	}
}

// TestACLLockNeedsSessionWrite: pier lock with a token that may write
// the key but not make a session on the agent's node fails at once, with
// one line that says why, and runs nothing.
func TestACLLockNeedsSessionWrite(t *testing.T) {
	a, _ := startSessionQueryAgent(t)
	marker := filepath.Join(t.TempDir(), "ran")
	out, errOut, code := pier(t, "lock", "-http-addr", a.addr, "-token", "node-secret", "jobs/x", "touch "+marker)
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if code == 0 || len(lines) != 1 || !strings.Contains(lines[0], "lacks permission 'session:write' on \"n1\"") {
		t.Errorf("pier lock without session write: exit %d, stdout %q, stderr %q; want one line naming session:write", code, out, errOut)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the command ran without the lock")
	}
	if _, errOut, code := pier(t, "lock", "-http-addr", a.addr, "-token", "root-secret", "jobs/x", "touch "+marker); code != 0 {
		t.Errorf("pier lock with the management token: exit %d %s", code, errOut)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Error("the command did not run under the management token")
	}
}
