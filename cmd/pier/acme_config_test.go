package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestProxyACMEConfig: proxy.tls.acme and routes with tls: acme; a mistake
// stops the agent with an error naming the field.
func TestProxyACMEConfig(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, selfSignedPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func(proxy string) (*agentConfig, error) {
		p := filepath.Join(dir, "pier.yaml")
		os.WriteFile(p, []byte("proxy:\n"+proxy), 0o600)
		c := &agentConfig{}
		if err := c.loadFile(p); err != nil {
			return c, err
		}
		return c, c.resolveProxy("", false)
	}
	c, err := load(`  tls:
    acme: {email: ops@example.com, ca: "https://ca.example/dir", ca_root: ` + root + `, names: [www.example.com], renew_check: 1m, token: tok}
  routes:
    - {host: shop.example.com, service: shop, tls: acme}
    - {host: api.example.com, service: api, tls: true}
`)
	if err != nil {
		t.Fatal(err)
	}
	a := c.Proxy.proxy.TLS.ACME
	if a == nil || a.Email != "ops@example.com" || a.CA != "https://ca.example/dir" || a.CARoot != root || a.RenewCheck != time.Minute || a.Token != "tok" ||
		!slices.Equal(a.Names, []string{"www.example.com", "shop.example.com"}) {
		t.Errorf("acme: %+v", a)
	}
	if c, err := load("  tls:\n    acme: {names: [\"*.example.com\"], challenges: [dns-01], allow: [\"*.example.com\"]}\n"); err != nil ||
		!slices.Equal(c.Proxy.proxy.TLS.ACME.Challenges, []string{"dns-01"}) || !slices.Equal(c.Proxy.proxy.TLS.ACME.Allow, []string{"*.example.com"}) {
		t.Errorf("a wildcard with dns-01: %v", err)
	}
	if rs := c.Proxy.proxy.Routes; len(rs) != 2 || rs[0].TLS || !rs[1].TLS {
		t.Errorf("routes: %+v (tls: acme is the front door's certificate, not TLS to the instances)", rs)
	}
	for _, tc := range []struct{ proxy, want string }{
		{"  tls:\n    acme: {names: [\"*.example.com\"]}\n", "proxy.tls.acme.names[0] \"*.example.com\": a wildcard"},
		{"  tls:\n    acme: {names: [10.0.0.1]}\n", "proxy.tls.acme.names[0] \"10.0.0.1\": an IP address"},
		{"  tls:\n    acme: {names: [localhost]}\n", "proxy.tls.acme.names[0] \"localhost\""},
		{"  tls:\n    acme: {names: [a.example.com], ca: \"ftp://x\"}\n", "proxy.tls.acme.ca \"ftp://x\""},
		{"  tls:\n    acme: {names: [a.example.com], email: nobody}\n", "proxy.tls.acme.email \"nobody\""},
		{"  tls:\n    acme: {names: [a.example.com], ca_root: " + filepath.Join(dir, "missing.pem") + "}\n", "proxy.tls.acme.ca_root"},
		{"  tls:\n    acme: {names: [a.example.com], renew_check: -1s}\n", "proxy.tls.acme.renew_check"},
		{"  tls:\n    acme: {allow: [\"*.-x.com\"]}\n", "proxy.tls.acme.allow[0] \"*.-x.com\""},
		{"  tls:\n    acme: {challenges: [dns-02]}\n", "proxy.tls.acme.challenges[0] \"dns-02\""},
		{"  tls:\n    acme: {challenges: [dns-01, http-01]}\n", "dns-01 is used alone"},
		{"  tls:\n    acme: {names: [\"*.example.com\"], challenges: [http-01]}\n", "proxy.tls.acme.names[0] \"*.example.com\": a wildcard needs the DNS-01 challenge"},
		{"  tls:\n    acme: {names: [a.example.com], agree: true}\n", "unknown key"},
		{"  routes:\n    - {host: a.example.com, service: a, tls: acme}\n", "proxy.routes[0].tls: acme needs proxy.tls.acme"},
		{"  tls:\n    acme: {names: [a.example.com]}\n  routes:\n    - {service: a, tls: acme}\n", "proxy.routes[0].tls: acme needs the route's host"},
		{"  routes:\n    - {host: a.example.com, service: a, tls: yes please}\n", "proxy.routes[0].tls \"yes please\": want true, false or acme"},
		{"  tls: {}\n", "proxy.tls: at least one entry in certs, or acme"},
	} {
		if _, err := load(tc.proxy); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.proxy, err, tc.want)
		}
	}
}
