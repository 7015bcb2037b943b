package main

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestPreparedQueryTemplates runs Consul's prepared-query templates on the
// built agent through the consul/api client and dig: a catch-all template
// that serves any service by the name asked (geo-db.query.consul), a
// longer template with a regexp whose groups pick the service and a tag,
// an exact name that wins over both, explain of a rendered template (with
// the client's Raw: it has no Explain),
// RemoveEmptyTags, and the errors of a bad regexp or interpolation at
// create time.
func TestPreparedQueryTemplates(t *testing.T) {
	requireDig(t)
	a := startAgent(t, "-dev", "-node", "n1", "-proxy-addr", "127.0.0.1:0")
	cfg := consul.DefaultConfig()
	cfg.Address = a.addr
	c, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*consul.AgentServiceRegistration{
		{ID: "db1", Name: "db", Tags: []string{"primary"}, Address: "10.0.0.1", Port: 5432},
		{ID: "db2", Name: "db", Tags: []string{"replica"}, Address: "10.0.0.2", Port: 5432},
		{ID: "web1", Name: "web", Address: "10.0.1.1", Port: 80},
		{ID: "cache1", Name: "cache", Address: "10.0.2.1", Port: 6379},
	} {
		if err := c.Agent().ServiceRegister(s); err != nil {
			t.Fatal(err)
		}
	}
	pq := c.PreparedQuery()
	eventually.NoError(t, 10*time.Second, "the servers take a query", func() error {
		_, _, err := pq.List(nil)
		return err
	})
	// Every name: the service named by what follows "geo-", or by the
	// whole name (name.suffix of the empty prefix).
	catchAll, _, err := pq.Create(&consul.PreparedQueryDefinition{
		Template: consul.QueryTemplate{Type: "name_prefix_match"},
		Service:  consul.ServiceQuery{Service: "${name.suffix}"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// db-primary, db-replica: the service and the tag from the groups.
	dbTmpl, _, err := pq.Create(&consul.PreparedQueryDefinition{
		Name: "db-",
		Template: consul.QueryTemplate{Type: "name_prefix_match", Regexp: "^db-(primary|replica)?$",
			RemoveEmptyTags: true},
		Service: consul.ServiceQuery{Service: "db", Tags: []string{"${match(1)}"},
			IgnoreCheckIDs: []string{"${name.prefix}|${name.full}|${name.suffix}|${agent.segment}|${match(0)}|${match(7)}"}},
		DNS: consul.QueryDNSOptions{TTL: "7s"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	exact, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "db-replica", Service: consul.ServiceQuery{Service: "web"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	services := func(res *consul.PreparedQueryExecuteResponse) []string {
		var out []string
		for _, n := range res.Nodes {
			out = append(out, n.Service.ID)
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		name string
		want []string
	}{
		{"cache", []string{"cache1"}},          // the catch-all
		{"db-primary", []string{"db1"}},        // the longest prefix, its regexp's group as a tag
		{"DB-PRIMARY", []string{"db1", "db2"}}, // prefixes match without case; the regexp does not, so no tag
		{"db-", []string{"db1", "db2"}},        // no group: an empty tag, removed
		{"db-replica", []string{"web1"}},       // an exact name wins
		{"DB-Replica", []string{"web1"}},       // names compare without case, as Consul\'s
		{"nothing-here", nil},                  // rendered, no such service
	} {
		res, _, err := pq.Execute(c.name, nil)
		if err != nil {
			t.Fatalf("Execute %s: %v", c.name, err)
		}
		if got := services(res); !slices.Equal(got, c.want) {
			t.Errorf("Execute %s: %v, want %v", c.name, got, c.want)
		}
	}
	if res, _, err := pq.Execute("db-primary", nil); err != nil || res.DNS.TTL != "7s" || res.Service != "db" {
		t.Errorf("Execute db-primary: %+v, %v", res, err)
	}
	ex, _, err := explain(c, "db-primary", nil)
	if err != nil || ex.Query.ID != dbTmpl || ex.Query.Service.Service != "db" || !slices.Equal(ex.Query.Service.Tags, []string{"primary"}) ||
		ex.Query.Template.Type != "name_prefix_match" ||
		!slices.Equal(ex.Query.Service.IgnoreCheckIDs, []string{"db-|db-primary|primary||db-primary|"}) {
		t.Errorf("Explain db-primary: %+v, %v", ex, err)
	}
	if ex, _, err := explain(c, "web", nil); err != nil || ex.Query.ID != catchAll || ex.Query.Service.Service != "web" {
		t.Errorf("Explain web: %+v, %v", ex, err)
	}
	if ex, _, err := explain(c, "db-replica", nil); err != nil || ex.Query.ID != exact {
		t.Errorf("Explain db-replica: %+v, %v", ex, err)
	}
	// Get shows the template as stored; a template runs only by name.
	if got, _, err := pq.Get(dbTmpl, nil); err != nil || len(got) != 1 || got[0].Service.Tags[0] != "${match(1)}" {
		t.Errorf("Get the template: %+v, %v", got, err)
	}
	if _, _, err := pq.Execute(dbTmpl, nil); err == nil || !strings.Contains(err.Error(), "only be resolved up by name") {
		t.Errorf("Execute a template by ID: %v", err)
	}

	// DNS: any name reaches a template.
	if got := strings.TrimSpace(digAt(t, a.dns, "db-primary.query.consul", "+short")); got != "10.0.0.1" {
		t.Errorf("dig db-primary.query.consul: %q, want 10.0.0.1", got)
	}
	if got := digAt(t, a.dns, "db-primary.query.consul"); !regexp.MustCompile(`\s7\s+IN\s+A\s+10\.0\.0\.1`).MatchString(got) {
		t.Errorf("dig db-primary.query.consul: the TTL is not the template's 7s:\n%s", got)
	}
	if got := strings.TrimSpace(digAt(t, a.dns, "cache.query.consul", "+short")); got != "10.0.2.1" {
		t.Errorf("dig cache.query.consul: %q, want 10.0.2.1", got)
	}
	if got := strings.TrimSpace(digAt(t, a.dns, "db-replica.query.consul", "+short")); got != "10.0.1.1" {
		t.Errorf("dig db-replica.query.consul: %q, want web's 10.0.1.1 (the exact name wins)", got)
	}
	// A name with capitals is reached by DNS, which lowercases names.
	if _, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "Cache-Q", Service: consul.ServiceQuery{Service: "web"}}, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(digAt(t, a.dns, "Cache-Q.query.consul", "+short")); got != "10.0.1.1" {
		t.Errorf("dig Cache-Q.query.consul: %q, want web's 10.0.1.1", got)
	}
	if _, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "cache-q", Service: consul.ServiceQuery{Service: "web"}}, nil); err == nil || !strings.Contains(err.Error(), "aliases an existing query name") {
		t.Errorf("a name that differs only in case: %v", err)
	}
	if got := digAt(t, a.dns, "nothing-here.query.consul"); !strings.Contains(got, "NXDOMAIN") {
		t.Errorf("dig nothing-here.query.consul:\n%s", got)
	}

	// Errors at create time, as Consul's; nothing is stored.
	for _, c := range []struct {
		def  consul.PreparedQueryDefinition
		want string
	}{
		{consul.PreparedQueryDefinition{Name: "x", Template: consul.QueryTemplate{Type: "name_prefix_match", Regexp: "(["},
			Service: consul.ServiceQuery{Service: "x"}}, "failed compiling template: Bad Regexp"},
		{consul.PreparedQueryDefinition{Name: "y", Template: consul.QueryTemplate{Type: "name_prefix_match"},
			Service: consul.ServiceQuery{Service: "${name.full"}}, "failed compiling template: Bad format '${name.full' in Service.Service"},
		{consul.PreparedQueryDefinition{Name: "z", Template: consul.QueryTemplate{Type: "name_prefix_match"},
			Service: consul.ServiceQuery{Service: "x", Tags: []string{"${nope}"}}}, "failed compiling template: Bad evaluation for '${nope}' in Service.Tags[0]"},
		{consul.PreparedQueryDefinition{Name: "w", Template: consul.QueryTemplate{Type: "name_suffix_match"},
			Service: consul.ServiceQuery{Service: "x"}}, "Bad Template.Type 'name_suffix_match'"},
		{consul.PreparedQueryDefinition{Template: consul.QueryTemplate{Type: "name_prefix_match"},
			Service: consul.ServiceQuery{Service: "x"}}, "a query template with an empty name already exists"},
		{consul.PreparedQueryDefinition{Name: "DB-", Template: consul.QueryTemplate{Type: "name_prefix_match"},
			Service: consul.ServiceQuery{Service: "x"}}, "aliases an existing query name"},
	} {
		if _, _, err := pq.Create(&c.def, nil); err == nil || !strings.Contains(err.Error(), "400") || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Create %+v: %v, want 400 %q", c.def, err, c.want)
		}
	}
	if list, _, err := pq.List(nil); err != nil || len(list) != 4 {
		t.Errorf("List after refused creates: %d queries, %v", len(list), err)
	}
	// Deleting the longer template leaves its names to the catch-all.
	if _, err := pq.Delete(dbTmpl, nil); err != nil {
		t.Fatal(err)
	}
	if ex, _, err := explain(c, "db-primary", nil); err != nil || ex.Query.ID != catchAll || ex.Query.Service.Service != "db-primary" {
		t.Errorf("Explain db-primary after the delete: %+v, %v", ex, err)
	}
}

// explain reads /v1/query/name/explain with the consul/api client's Raw
// (it has no Explain of its own).
func explain(c *consul.Client, name string, _ *consul.QueryOptions) (*struct {
	Query consul.PreparedQueryDefinition
}, *consul.QueryMeta, error) {
	var out struct {
		Query consul.PreparedQueryDefinition
	}
	qm, err := c.Raw().Query("/v1/query/"+name+"/explain", &out, nil)
	return &out, qm, err
}

// TestPreparedQuerySession: a query bound to a session goes when the
// session is destroyed, as Consul's; one bound to a session that does not
// exist is refused.
func TestPreparedQuerySession(t *testing.T) {
	a := startAgent(t, "-dev", "-node", "n1", "-proxy-addr", "127.0.0.1:0")
	cfg := consul.DefaultConfig()
	cfg.Address = a.addr
	c, err := consul.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pq := c.PreparedQuery()
	var sess string
	eventually.NoError(t, 10*time.Second, "a session", func() error {
		sess, _, err = c.Session().Create(&consul.SessionEntry{Name: "q"}, nil)
		return err
	})
	bound, _, err := pq.Create(&consul.PreparedQueryDefinition{Session: sess, Service: consul.ServiceQuery{Service: "web"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	named, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "web-bound", Session: sess, Service: consul.ServiceQuery{Service: "web"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	free, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "web-free", Service: consul.ServiceQuery{Service: "web"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := pq.Create(&consul.PreparedQueryDefinition{Name: "x", Session: "c6c6c6c6-0000-4000-8000-000000000000",
		Service: consul.ServiceQuery{Service: "web"}}, nil); err == nil || !strings.Contains(err.Error(), `invalid session "c6c6c6c6-0000-4000-8000-000000000000"`) {
		t.Errorf("Create with an unknown session: %v", err)
	}
	// An update that moves a query off the session keeps it.
	if _, err := pq.Update(&consul.PreparedQueryDefinition{ID: named, Name: "web-bound", Service: consul.ServiceQuery{Service: "web"}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Session().Destroy(sess, nil); err != nil {
		t.Fatal(err)
	}
	list, _, err := pq.List(nil)
	var ids []string
	for _, q := range list {
		ids = append(ids, q.ID)
	}
	slices.Sort(ids)
	want := []string{named, free}
	slices.Sort(want)
	if err != nil || !slices.Equal(ids, want) {
		t.Errorf("after the session's destruction: %v, %v; want %v (%s gone)", ids, err, want, bound)
	}
	if _, _, err := pq.Execute("web-bound", nil); err != nil {
		t.Errorf("the query moved off the session: %v", err)
	}
}
