package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

// loadFiles loads config files, written in order, into the defaults.
func loadFiles(t *testing.T, bodies ...string) (agentConfig, error) {
	t.Helper()
	dir := t.TempDir()
	c := defaultAgentConfig()
	for i, body := range bodies {
		p := filepath.Join(dir, string(rune('a'+i))+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := c.loadFile(p); err != nil {
			return c, err
		}
	}
	return c, nil
}

// TestConfigProxySection: the proxy section is read straight into
// lb.Config and proxy.Config in Consul's spellings; a second file overrides
// what it names and adds its routes and certificates to the first's.
func TestConfigProxySection(t *testing.T) {
	c, err := loadFiles(t, `
proxy:
  ReadTimeout: 5s
  keep-alive: 3s
  client_timeout: 2s
  include_warning: true
  retries: 1
  max_body_size: 1024
  access_log: off
  routes:
    - {path: /a/, service: a, fail_timeout: 1s}
  tls:
    certs: [{cert_file: a.pem, key_file: a.key}]
`, `
proxy:
  read_timeout: 7s
  routes:
    - {Path: /b/, Service: b, max-fails: 2}
  tls:
    redirect_http: true
    certs: [{CertFile: b.pem, KeyFile: b.key}]
`)
	if err != nil {
		t.Fatal(err)
	}
	p := c.Proxy
	if p.lb.ReadTimeout != 7*time.Second || p.lb.IdleConnTimeout != 3*time.Second || !p.lb.IncludeWarning || p.lb.WriteTimeout != 60*time.Second {
		t.Errorf("lb: %+v", p.lb)
	}
	if p.proxy.WriteTimeout != 2*time.Second || p.proxy.Tries != 2 || p.proxy.MaxBodySize != 1024 || p.proxy.AccessLog != "off" || p.proxy.IdleTimeout != 75*time.Second {
		t.Errorf("proxy: %+v", p.proxy)
	}
	rs := p.proxy.Routes
	if len(rs) != 2 || rs[0].FailTimeout != time.Second || rs[1].Service != "b" || rs[1].MaxFails == nil || *rs[1].MaxFails != 2 {
		t.Errorf("routes: %+v", rs)
	}
	if tl := p.proxy.TLS; tl == nil || len(tl.Certs) != 2 || tl.Certs[0].CertFile != "a.pem" || tl.Certs[1].KeyFile != "b.key" || !tl.RedirectHTTP || p.TLSAddr != ":443" {
		t.Errorf("tls: %+v %q", tl, p.TLSAddr)
	}
	if c, err := loadFiles(t, "proxy: {addr: ':0'}\n"); err != nil || c.Proxy.proxy.TLS != nil {
		t.Errorf("a proxy without a tls section: %+v, %v", c.Proxy, err)
	}
	// The error names the file and the key as written, under its section.
	for body, want := range map[string]string{
		"proxy:\n  routes:\n    - {service: a, Fail_Timeout: soon}\n":               `a.yaml: proxy.routes[0].Fail_Timeout: invalid duration "soon"`,
		"proxy:\n  routes:\n    - {service: a, bogus: 1}\n":                         `a.yaml: unknown key "proxy.routes[0].bogus"`,
		"proxy:\n  max_fail: 3\n":                                                   `a.yaml: unknown key "proxy.max_fail"`,
		"proxy:\n  tries: 2\n  retries: 1\n":                                        "give tries or retries, not both",
		"proxy:\n  max_conns: lots\n":                                               "proxy.max_conns: want an integer, got a string",
		"proxy:\n  engine: epoll\n":                                                 "proxy.engine \"epoll\": want goroutines or eventloop",
		"proxy:\n  tls: {redirect_port: 0, certs: [{cert_file: a, key_file: b}]}\n": "proxy.tls.redirect_port 0: want 1-65535",
		"proxy:\n  tls: {certs: [{cert_file: a.pem}]}\n":                            "proxy.tls.certs[0]: cert_file and key_file are both required",
	} {
		_, err := loadFiles(t, body)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", body, err, want)
		}
	}
}

// TestConfigDNSSection: dns_config is read into dns.Config once, with the
// service names of service_ttl kept as written, allowed sources from
// several files added up, and errors naming the file and the key.
func TestConfigDNSSection(t *testing.T) {
	c, err := loadFiles(t, `
domain: pier.internal
dns_config:
  OnlyPassing: true
  node-ttl: 10s
  service_ttl: {"*": 5s, "Web_API": 1s, "web-api": 2s}
  allow: [10.0.0.1, 192.168.0.0/16]
  allow_stale: true
`, `
dns_config:
  udp_answer_limit: 2
  allow: ["fd00::/8"]
`)
	if err != nil {
		t.Fatal(err)
	}
	d := c.DNS
	if !d.OnlyPassing || d.NodeTTL != 10*time.Second || d.UDPAnswerLimit != 2 || !d.EnableTruncate || d.Domain != "pier.internal" || d.RecursorTimeout != 2*time.Second {
		t.Errorf("dns: %+v", d)
	}
	if len(d.ServiceTTL) != 3 || d.ServiceTTL["Web_API"] != time.Second || d.ServiceTTL["web-api"] != 2*time.Second || d.ServiceTTL["*"] != 5*time.Second {
		t.Errorf("service_ttl: %v", d.ServiceTTL)
	}
	if got := fmt.Sprint(d.AllowRecursion); got != "[10.0.0.1/32 192.168.0.0/16 fd00::/8]" {
		t.Errorf("allow: %s", got)
	}
	for body, want := range map[string]string{
		"dns_config:\n  only_pasing: true\n":             `a.yaml: unknown key "dns_config.only_pasing"`,
		"dns_config:\n  service_ttl: {web: soon}\n":      `a.yaml: dns_config.service_ttl.web: invalid duration "soon"`,
		"dns_config:\n  node_ttl: -1s\n":                 `a.yaml: dns_config.node_ttl: invalid duration "-1s"`,
		"dns_config:\n  allow: [10.0.0.1, everyone]\n":   `a.yaml: dns_config.allow[1]: "everyone": want an address or a CIDR`,
		"dns_config:\n  udp_answer_limit: 0\n":           "dns_config.udp_answer_limit: 0: want at least 1",
		"dns_config:\n  max_stale: 10s\n  bogus: true\n": `unknown key "dns_config.bogus"`,
	} {
		_, err := loadFiles(t, body)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", body, err, want)
		}
	}
}

// TestConfigACLSection: the acl section in Consul's spellings, its tokens
// straight into api.ACLToken, rule names kept as written, errors naming
// the file and the key.
func TestConfigACLSection(t *testing.T) {
	_, err := loadFiles(t, `
ACL:
  Enabled: true
  default-policy: deny
  tokens: {Master: m, agent: ag}
  TokensList:
    - {SecretID: x}
`)
	if err == nil || !strings.Contains(err.Error(), `a.yaml: unknown key "acl.TokensList[0].SecretID"`) {
		t.Errorf("a token's unknown key: %v", err)
	}
	c, err := loadFiles(t, `
ACL:
  Enabled: true
  default-policy: deny
  tokens: {Master: m, agent: ag}
  TokensList:
    - secret: s
      Rules: {Service-Prefix: {"Web_": write}, key_prefix: {"a/B-c_": read}}
`)
	if err != nil {
		t.Fatal(err)
	}
	a := c.ACL
	if !a.Enabled || a.DefaultPolicy != "deny" || a.InitialManagement != "m" || a.Agent != "ag" || len(c.Warnings) != 1 {
		t.Errorf("acl: %+v %q", a, c.Warnings)
	}
	if len(a.Tokens) != 1 || a.Tokens[0].Rules.ServicePrefix["Web_"] != "write" || a.Tokens[0].Rules.KeyPrefix["a/B-c_"] != "read" {
		t.Errorf("tokens: %+v", a.Tokens)
	}
	for body, want := range map[string]string{
		"acl:\n  default_polcy: deny\n":                                             `a.yaml: unknown key "acl.default_polcy"`,
		"acl:\n  tokens_list:\n    - secret: a\n      rules: {sevice: {x: read}}\n": `a.yaml: acl.tokens_list[0].rules: unknown key "sevice"`,
		"acl:\n  enabled: maybe\n":                                                  `a.yaml: acl.enabled: want true or false, got a string`,
	} {
		_, err := loadFiles(t, body)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", body, err, want)
		}
	}
}

// TestConfigServiceSection: services in any of Consul's spellings, with
// the keys of node_meta, Meta, TaggedAddresses and check headers kept byte
// for byte, and an unknown key named with its path in the definition.
func TestConfigServiceSection(t *testing.T) {
	c, err := loadFiles(t, `
node_meta: {Rack_ID: r1, rack-id: r2}
services:
  - name: api
    Enable-Tag-Override: true
    meta: {Some_Key: x, some-key: z}
    tagged_addresses: {LAN_ipv4: {address: 10.0.0.1, port: 80}}
    check: {http: "http://127.0.0.1/", interval: 10s, Header: {X_Forwarded-For: [a]}}
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeMeta["Rack_ID"] != "r1" || c.NodeMeta["rack-id"] != "r2" {
		t.Errorf("node_meta: %v", c.NodeMeta)
	}
	s := c.Services[0]
	if !s.Service.EnableTagOverride || s.Service.Meta["Some_Key"] != "x" || s.Service.Meta["some-key"] != "z" || s.Service.TaggedAddresses["LAN_ipv4"].Port != 80 {
		t.Errorf("service: %+v", s.Service)
	}
	if h := s.Checks[0].Definition.Header; len(h["X_Forwarded-For"]) != 1 {
		t.Errorf("check header: %v", h)
	}
	if c, err := loadFiles(t, "locality: {region: eu, zone: eu-1}\n", "Locality: {Region: us}\n"); err != nil || *c.Locality != (registry.Locality{Region: "us", Zone: "eu-1"}) {
		t.Errorf("locality over two files: %+v, %v", c.Locality, err)
	}
	for body, want := range map[string]string{
		"services:\n  - {name: a, check: {ttl: 10s, bogus: 1}}\n": `a.yaml: services[0]: Check.bogus: unknown field`,
		"services:\n  - {name: a, port: eighty}\n":                `a.yaml: services[0]: Port: expected int, got string`,
		"service: {name: a, Port: 1, port: 2}\n":                  `a.yaml: services[0]: Port: given twice`,
	} {
		_, err := loadFiles(t, body)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", body, err, want)
		}
	}
}

// TestConfigTLSSection: tls.defaults and tls.internal_rpc (over them) set
// the server port's TLS, apart from the top-level keys of the HTTPS API;
// a setting that needs another names both.
func TestConfigTLSSection(t *testing.T) {
	c, err := loadFiles(t, `
cert_file: /api.pem
tls:
  defaults:
    ca_file: /ca.pem
    cert_file: /d.pem
    key_file: /d-key.pem
    verify_incoming: true
  internal_rpc:
    cert_file: /rpc.pem
    verify_outgoing: true
    verify_server_hostname: true
`)
	if err != nil {
		t.Fatal(err)
	}
	got := c.InternalTLS
	if got.CAFile != "/ca.pem" || got.CertFile != "/rpc.pem" || got.KeyFile != "/d-key.pem" || !got.VerifyIncoming || !got.VerifyOutgoing || !got.VerifyServerHostname {
		t.Errorf("internal_rpc: %+v", got)
	}
	if c.TLS.CertFile != "/api.pem" {
		t.Errorf("the HTTPS API's cert_file: %q", c.TLS.CertFile)
	}
	for body, want := range map[string]string{
		"tls:\n  internal_rpc:\n    verify_incoming: true\n    cert_file: a\n    key_file: b\n": "verify_incoming needs ca_file",
		"tls:\n  internal_rpc:\n    cert_file: a\n":                                             "cert_file and key_file go together",
		"tls:\n  internal_rpc:\n    verify_outgoing: true\n    cert_file: a\n    key_file: b\n": "verify_outgoing needs ca_file",
		"tls:\n  internal_rpc:\n    verify_outgoin: true\n":                                     `unknown key "tls.internal_rpc.verify_outgoin"`,
	} {
		dir := t.TempDir()
		p := filepath.Join(dir, "a.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		var out, errOut strings.Builder
		err := runValidate([]string{p}, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v, want one line with %q", body, err, want)
		}
	}
}
