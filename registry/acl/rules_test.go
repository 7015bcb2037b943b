package acl_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry/acl"
)

func TestParseRules(t *testing.T) {
	want := acl.Rules{
		ServicePrefix: map[string]string{"web": "write", "": "read"},
		Service:       map[string]string{"web-admin": "deny"},
		KeyPrefix:     map[string]string{"app/": "write"},
		Key:           map[string]string{"app/secret": "deny"},
		NodePrefix:    map[string]string{"": "read"},
		Node:          map[string]string{"n1": "write"},
		AgentPrefix:   map[string]string{"": "read"},
		Agent:         map[string]string{"n1": "write"},
		EventPrefix:   map[string]string{"": "read"},
		Event:         map[string]string{"deploy": "write"},
		SessionPrefix: map[string]string{"": "write"},
		Session:       map[string]string{"db1": "deny"},
		QueryPrefix:   map[string]string{"web": "write"},
		Query:         map[string]string{"web-admin": "read"},
		Operator:      "read",
		ACL:           "write",
		Keyring:       "deny",
	}
	hcl := `
# a comment
service_prefix "web" { policy = "write" }
service_prefix "" {
  policy     = "read"
  intentions = "read" // ignored
}
service "web-admin" { policy = "deny" }
key_prefix "app/" { policy = "write" }
key "app/secret" { policy = "deny" }
/* nodes
   and agents */
node_prefix "" { policy = "read" }
node "n1" { policy = "write" }
agent_prefix "" { policy = "read" }
agent "n1" { policy = "write" }
event_prefix "" { policy = "read" }
event "deploy" { policy = "write" }
session_prefix "" { policy = "write" }
session "db1" { policy = "deny" }
query_prefix "web" { policy = "write" }
query "web-admin" { policy = "read" }
operator = "read"
acl = "write"
keyring = "deny"
mesh = "read"
`
	js := `{
  "service_prefix": {"web": {"policy": "write"}, "": {"policy": "read", "intentions": "read"}},
  "service": [{"web-admin": {"policy": "deny"}}],
  "key_prefix": {"app/": {"policy": "write"}},
  "key": {"app/secret": {"policy": "deny"}},
  "node_prefix": {"": {"policy": "read"}},
  "node": {"n1": {"policy": "write"}},
  "agent_prefix": {"": {"policy": "read"}},
  "agent": {"n1": {"policy": "write"}},
  "event_prefix": {"": {"policy": "read"}},
  "event": {"deploy": {"policy": "write"}},
  "session_prefix": {"": {"policy": "write"}},
  "session": {"db1": {"policy": "deny"}},
  "query_prefix": {"web": {"policy": "write"}},
  "query": {"web-admin": {"policy": "read"}},
  "operator": "read", "acl": "write", "keyring": "deny", "peering": "read"
}`
	for name, src := range map[string]string{"hcl": hcl, "json": js} {
		got, err := acl.ParseRules(src)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", name, got, want)
		}
	}
	if r, err := acl.ParseRules("  \n# nothing\n"); err != nil || !reflect.DeepEqual(r, acl.Rules{}) {
		t.Errorf("empty rules: %+v %v", r, err)
	}
	for _, c := range []struct{ src, want string }{
		{`service "x" { policy = "read" }` + "\n" + `service "x" { policy = "write" }`, `line 2: service "x" is defined twice`},
		{`service_prefix = "read"`, `needs a name and a block`},
		{`operator = "read" operator = "write"`, `operator is defined twice`},
		{`operator = "all"`, `operator: "all" is not one of read, write, deny`},
		{`key "k" { }`, `key "k": policy is missing`},
		{`key "k" { policy = read }`, `want a quoted value`},
		{`key "k`, `unterminated string`},
		{`/* open`, `unterminated comment`},
		{`key "k" { policy = "read" } }`, `want a rule name, got }`},
		{`agent "a" { intentions = "read" policy = "read" }`, `unknown key "intentions"`},
		{`{"key": "read"}`, `key: want an object`},
		{`{"operator": 1}`, `operator: want a string`},
		{`{"key": {`, `not valid JSON`},
	} {
		_, err := acl.ParseRules(c.src)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseRules(%q): got %v, want an error with %q", c.src, err, c.want)
		}
	}
}

// formatRules writes rules back in the HCL form.
func formatRules(r acl.Rules) string {
	var b strings.Builder
	for _, m := range []struct {
		kind string
		m    map[string]string
	}{
		{"service_prefix", r.ServicePrefix}, {"service", r.Service}, {"key_prefix", r.KeyPrefix}, {"key", r.Key},
		{"node_prefix", r.NodePrefix}, {"node", r.Node}, {"agent_prefix", r.AgentPrefix}, {"agent", r.Agent},
		{"event_prefix", r.EventPrefix}, {"event", r.Event}, {"session_prefix", r.SessionPrefix}, {"session", r.Session},
		{"query_prefix", r.QueryPrefix}, {"query", r.Query},
	} {
		names := make([]string, 0, len(m.m))
		for n := range m.m {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(&b, "%s %s { policy = %s }\n", m.kind, strconv.Quote(n), strconv.Quote(m.m[n]))
		}
	}
	for _, a := range []struct{ name, v string }{{"operator", r.Operator}, {"acl", r.ACL}, {"keyring", r.Keyring}} {
		if a.v != "" {
			fmt.Fprintf(&b, "%s = %s\n", a.name, strconv.Quote(a.v))
		}
	}
	return b.String()
}

// formatRulesJSON writes rules in the JSON form.
func formatRulesJSON(r acl.Rules) string {
	top := map[string]any{}
	for _, m := range []struct {
		kind string
		m    map[string]string
	}{
		{"service_prefix", r.ServicePrefix}, {"service", r.Service}, {"key_prefix", r.KeyPrefix}, {"key", r.Key},
		{"node_prefix", r.NodePrefix}, {"node", r.Node}, {"agent_prefix", r.AgentPrefix}, {"agent", r.Agent},
		{"event_prefix", r.EventPrefix}, {"event", r.Event}, {"session_prefix", r.SessionPrefix}, {"session", r.Session},
		{"query_prefix", r.QueryPrefix}, {"query", r.Query},
	} {
		if len(m.m) == 0 {
			continue
		}
		o := map[string]map[string]string{}
		for n, v := range m.m {
			o[n] = map[string]string{"policy": v}
		}
		top[m.kind] = o
	}
	for _, a := range []struct{ name, v string }{{"operator", r.Operator}, {"acl", r.ACL}, {"keyring", r.Keyring}} {
		if a.v != "" {
			top[a.name] = a.v
		}
	}
	b, _ := json.Marshal(top)
	return string(b)
}

// FuzzParseRules: the parser never panics, and what it accepts reads back
// the same from both its HCL and its JSON rendering.
func FuzzParseRules(f *testing.F) {
	for _, s := range []string{
		`service_prefix "web" { policy = "write" }`,
		`{"key_prefix": {"app/": {"policy": "read"}}, "operator": "read"}`,
		"# c\nnode \"n\\u00e9\" {\n policy = \"deny\"\n}\nacl = \"read\"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		r, err := acl.ParseRules(src)
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("an empty error for %q", src)
			}
			return
		}
		for name, out := range map[string]string{"hcl": formatRules(r), "json": formatRulesJSON(r)} {
			back, err := acl.ParseRules(out)
			if err != nil {
				t.Fatalf("%s rendering %q of %q does not parse: %v", name, out, src, err)
			}
			if !reflect.DeepEqual(back, r) {
				t.Fatalf("%s rendering of %q reads back as %+v, want %+v", name, src, back, r)
			}
		}
	})
}

// TestEventRules: Consul's event rules decide who fires and who lists
// user events by name.
func TestEventRules(t *testing.T) {
	r, err := acl.ParseRules(`event_prefix "" { policy = "read" }
event "deploy" { policy = "write" }
event_prefix "secret-" { policy = "deny" }`)
	if err != nil {
		t.Fatal(err)
	}
	a, err := acl.New(acl.Config{Enabled: true, DefaultPolicy: "deny", Tokens: []acl.Token{{Secret: "s", Rules: r}}})
	if err != nil {
		t.Fatal(err)
	}
	p := a.Resolve("s")
	for _, c := range []struct {
		name        string
		read, write bool
	}{{"deploy", true, true}, {"deploy-2", true, false}, {"other", true, false}, {"secret-x", false, false}} {
		if got := p.EventRead(c.name); got != c.read {
			t.Errorf("EventRead(%q) = %v", c.name, got)
		}
		if got := p.EventWrite(c.name); got != c.write {
			t.Errorf("EventWrite(%q) = %v", c.name, got)
		}
	}
}

// TestSessionQueryRules: Consul's session rules go by the session's node,
// its query rules by the query's name; default_policy fills the rest.
func TestSessionQueryRules(t *testing.T) {
	r, err := acl.ParseRules(`session_prefix "" { policy = "read" }
session "web1" { policy = "write" }
session_prefix "db" { policy = "deny" }
query_prefix "web" { policy = "write" }
query "web-secret" { policy = "deny" }
query_prefix "api" { policy = "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	for _, dflt := range []string{"deny", "allow"} {
		a, err := acl.New(acl.Config{Enabled: true, DefaultPolicy: dflt, Tokens: []acl.Token{{Secret: "s", Rules: r}}})
		if err != nil {
			t.Fatal(err)
		}
		p := a.Resolve("s")
		for _, c := range []struct {
			node        string
			read, write bool
		}{{"web1", true, true}, {"web10", true, false}, {"app", true, false}, {"db1", false, false}} {
			if got := p.SessionRead(c.node); got != c.read {
				t.Errorf("%s: SessionRead(%q) = %v", dflt, c.node, got)
			}
			if got := p.SessionWrite(c.node); got != c.write {
				t.Errorf("%s: SessionWrite(%q) = %v", dflt, c.node, got)
			}
		}
		allow := dflt == "allow"
		for _, c := range []struct {
			name        string
			read, write bool
		}{{"web-x", true, true}, {"web", true, true}, {"web-secret", false, false}, {"api-x", true, false}, {"other", allow, allow}, {"", allow, allow}} {
			if got := p.QueryRead(c.name); got != c.read {
				t.Errorf("%s: QueryRead(%q) = %v", dflt, c.name, got)
			}
			if got := p.QueryWrite(c.name); got != c.write {
				t.Errorf("%s: QueryWrite(%q) = %v", dflt, c.name, got)
			}
		}
		if anon := a.Resolve(""); anon.SessionWrite("n") != allow || anon.QueryRead("q") != allow {
			t.Errorf("%s: anonymous session write %v, query read %v", dflt, anon.SessionWrite("n"), anon.QueryRead("q"))
		}
	}
}
