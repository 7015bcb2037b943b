package main

import (
	"regexp"
	"strings"
	"testing"
)

// TestCatalogCLI: `pier catalog` answers `consul catalog`'s forms with its
// flags and plain output.
func TestCatalogCLI(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, "-dev", "-node", "cat1", "-node-meta", "rack:a", "-data-dir", t.TempDir())
	for _, reg := range []string{
		`{"ID":"web1","Name":"web","Tags":["v1","blue"],"Port":80}`,
		`{"ID":"web2","Name":"web","Tags":["v2"],"Port":81}`,
		`{"ID":"db1","Name":"db","Port":5432}`,
	} {
		if code, body := curl(t, "-X", "PUT", "-d", reg, "http://"+a.addr+"/v1/agent/service/register"); code != 200 {
			t.Fatalf("register: %d %s", code, body)
		}
	}
	cat := func(args ...string) (string, string, int) {
		t.Helper()
		return pier(t, append([]string{"catalog", args[0], "-http-addr", a.addr}, args[1:]...)...)
	}
	for _, c := range []struct {
		args []string
		want string // a regexp the output must match
	}{
		{[]string{"datacenters"}, `^dc1\n$`},
		{[]string{"services"}, `^consul\ndb\nweb\n$`},
		{[]string{"services", "-tags"}, `(?m)^web\s+blue,v1,v2$`},
		{[]string{"services", "-node", "cat1"}, `^consul\ndb\nweb\n$`},
		{[]string{"services", "-filter", "ServiceName == db"}, `^db\n$`},
		{[]string{"services", "-node-meta", "rack=b"}, `^$`},
		{[]string{"nodes"}, `^Node\s+ID\s+Address\s+DC\ncat1\s+[0-9a-f]{8}\s+127\.0\.0\.1\s+dc1\n$`},
		{[]string{"nodes", "-service", "web"}, `(?m)^cat1\s+`},
		{[]string{"nodes", "-detailed"}, `(?m)^cat1\s+[0-9a-f-]{36}\s+127\.0\.0\.1\s+dc1\s+.*lan=127\.0\.0\.1.*\s+rack=a$`},
		{[]string{"nodes", "-service", "web", "-format", "json"}, `"Node": "cat1"`},
	} {
		out, errOut, rc := cat(c.args...)
		if rc != 0 || !regexp.MustCompile(c.want).MatchString(out) {
			t.Errorf("pier catalog %s: rc=%d\n%s%s\nwant %s", strings.Join(c.args, " "), rc, out, errOut, c.want)
		}
	}
	if out, errOut, rc := cat("nodes", "-service", "nope"); rc != 0 || out != "" || !strings.Contains(errOut, "No nodes match") {
		t.Errorf("nodes of an unknown service: rc=%d %q %q", rc, out, errOut)
	}
	for _, c := range []struct {
		args []string
		rc   int
		msg  string
	}{
		{[]string{"nodes", "-node-meta", "rack"}, 2, "key=value"},
		{[]string{"services", "-node", "nobody"}, 1, `no node "nobody"`},
		{[]string{"services", "-filter", "Nope =="}, 1, "filter"},
		{[]string{"checks"}, 2, "unknown catalog subcommand"},
	} {
		_, errOut, rc := cat(c.args...)
		if line := strings.TrimSpace(errOut); rc != c.rc || !strings.Contains(line, c.msg) || strings.Contains(line, "\n") {
			t.Errorf("pier catalog %s: rc=%d %q, want rc %d and one line with %q", strings.Join(c.args, " "), rc, line, c.rc, c.msg)
		}
	}
}
