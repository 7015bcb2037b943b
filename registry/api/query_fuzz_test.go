package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzQueryBody: /v1/query's create and update body. A refusal is one
// line; an accepted body names a service, is bound to a name or a session,
// has a NearestN not negative and a DNS TTL that parses, a template
// renders any name, and it stores and reads back as the same definition.
func FuzzQueryBody(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `null`, `{"Name":"q","Service":{"Service":"redis"}}`,
		`{"Name":"q","Service":{"Service":"redis","OnlyPassing":true,"Tags":["v1","!old"],"Near":"_agent","Failover":{"NearestN":2,"Datacenters":["dc2","dc3"]}},"DNS":{"TTL":"10s"}}`,
		`{"Session":"adf4238a-882b-9ddc-4a9d-5b6758e4159e","Service":{"Service":"db"}}`,
		`{"Name":"q","Service":{"Service":"x","Failover":{"NearestN":-1}}}`, `{"Name":"q","Service":{"Service":"x"},"DNS":{"TTL":"-1s"}}`,
		`{"Name":"q","Template":{"Type":"name_prefix_match"},"Service":{"Service":"x"}}`, `{"Name":3}`,
		`{"Name":"q","Service":{"Service":"x","Failover":{"Targets":[{"Datacenter":"dc2"}],"NearestN":1}}}`,
		`{"Template":{"Type":"name_prefix_match","Regexp":"^geo-db-(.*?)-([^\\-]+?)$","RemoveEmptyTags":true},"Service":{"Service":"mysql-${match(1)}","Tags":["${match(2)}",""],"NodeMeta":{"k":"${name.suffix}"},"Failover":{"Datacenters":["${agent.segment}dc2"]}}}`,
		`{"Name":"geo-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.full}-${name.prefix}","Near":"${1+2}"}}`,
		`{"Name":"x","Template":{"Type":"name_prefix_match","Regexp":"(["},"Service":{"Service":"${nope}"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := parseQueryBody(body)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("a message of more than one line: %q", err)
			}
			return
		}
		if q.Service.Service == "" || q.Name == "" && q.Session == "" && !q.isTemplate() || q.Service.Failover.NearestN < 0 {
			t.Fatalf("accepted %+v", q)
		}
		if q.isTemplate() {
			// An accepted template renders any name without failing.
			ct, err := compileTemplate(q)
			if err != nil {
				t.Fatalf("accepted a template that does not compile: %v", err)
			}
			for _, name := range []string{q.Name, q.Name + "x", q.Name + "-a-b", strings.ToUpper(q.Name) + "é"} {
				if _, err := ct.render(name, ""); err != nil {
					t.Fatalf("render %q: %v", name, err)
				}
			}
		}
		if q.DNS.TTL != "" {
			if d, err := time.ParseDuration(q.DNS.TTL); err != nil || d < 0 {
				t.Fatalf("accepted DNS TTL %q", q.DNS.TTL)
			}
		}
		b, err := json.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		back, err := parseQueryBody(b)
		if err != nil {
			t.Fatalf("a stored query does not read back: %v", err)
		}
		if bb, _ := json.Marshal(back); string(bb) != string(b) {
			t.Fatalf("stored %s, read back %s", b, bb)
		}
	})
}
