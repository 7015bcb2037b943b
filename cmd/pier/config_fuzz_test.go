package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/pier-dev/pier/proxy"
)

// FuzzConfigRoute: one route in YAML or JSON, read twice the way the agent
// reads routes: as an entry of the config file's proxy.routes (decodeConfig
// and mergeProxy) and as a KV route (proxy.ParseRoute). Both must accept it
// or both refuse it, and read the same route; what they accept is valid.
func FuzzConfigRoute(f *testing.F) {
	for _, s := range []string{
		"path: /api/\nservice: api\nstrip: /api\n",
		`{"host":"shop.example.com","service":"shop"}`,
		"path: /v2\nservice: api\nprepend: /api\nfail_timeout: 30s\nmax_fails: 3\n",
		"host: Shop.Example.COM:8080\nservice: shop\ntls: true\ntls_server_name: shop\ntls_skip_verify: true\n",
		"service: a\nmax_fails: -1\n",
		"service: a\nfail_timeout: -1s\n",
		"service: a\nfail_timeout: 1e3\n",
		"Service: a\nFAIL-TIMEOUT: 1s\n",
		"service: a\nbogus: 1\n",
		"service: a\nmax_fails: 1.5\n",
		"service: a\ntls: yes\n",
		"service: [a]\n",
		"path: x\nservice: a\n",
		"{}", "[1]", "~", "x", "service: &a x\nhost: *a\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		j, err := yaml.YAMLToJSON(in)
		if err != nil {
			return // not YAML: neither reader gets as far as a route
		}
		var route any
		if err := json.Unmarshal(j, &route); err != nil || route == nil {
			return
		}
		file, err := json.Marshal(map[string]any{"proxy": map[string]any{"routes": []any{route}}})
		if err != nil {
			t.Fatal(err)
		}
		kv, kvErr := proxy.ParseRoute(in)
		var cfgErr error
		var fc fileConfig
		c := defaultAgentConfig()
		if cfgErr = decodeConfig(file, &fc); cfgErr == nil {
			cfgErr = c.mergeProxy(fc.Proxy)
		}
		if kvErr == nil && kv.TLSCAFile != "" {
			return // the config file reads the bundle; the KV store cannot
		}
		if (kvErr == nil) != (cfgErr == nil) {
			t.Fatalf("%q: as a KV route %v, in the config file %v", in, kvErr, cfgErr)
		}
		if kvErr != nil {
			return
		}
		if c.Proxy == nil || len(c.Proxy.proxy.Routes) != 1 {
			t.Fatalf("%q: the config file has routes %+v", in, c.Proxy)
		}
		got := c.Proxy.proxy.Routes[0]
		if err := got.Validate(); err != nil {
			t.Fatalf("%q: the config file accepted an invalid route: %v", in, err)
		}
		if (got.MaxFails == nil) != (kv.MaxFails == nil) || got.MaxFails != nil && *got.MaxFails != *kv.MaxFails {
			t.Fatalf("%q: max_fails %v in the config file, %v as a KV route", in, got.MaxFails, kv.MaxFails)
		}
		got.MaxFails, kv.MaxFails = nil, nil
		if got != kv {
			t.Fatalf("%q:\nin the config file %+v\nas a KV route      %+v", in, got, kv)
		}
	})
}

// FuzzConfigFile: any config file either loads or stops the agent with one
// line that names the file; it never panics. A file that loads reads the
// same again (no dependence on map order), and the same as the JSON that
// YAML turns it into.
func FuzzConfigFile(f *testing.F) {
	for _, s := range []string{
		"node_name: n\ndatacenter: dc2\nnode_meta: {Rack_ID: r1}\nretry_interval: 5s\nlimits: {http_max_conns_per_client: 7}\n",
		"proxy:\n  addr: ':0'\n  read-timeout: 5s\n  retries: 1\n  access_log: off\n  routes:\n    - {path: /api/, service: api, strip: /api}\n  tls: {certs: [{cert_file: a, key_file: b}]}\n",
		"domain: pier.internal\nports: {dns: 0}\ndns_config:\n  service_ttl: {\"*\": 5s, Web_API: 1s}\n  allow: [10.0.0.1, 10.0.0.0/8]\n",
		"acl:\n  enabled: true\n  default_policy: deny\n  tokens: {master: m}\n  tokens_list:\n    - secret: s\n      rules: {service_prefix: {\"Web_\": write}}\n",
		"services:\n  - {name: api, port: 9000, meta: {Some_Key: x}, check: {http: 'http://127.0.0.1/', interval: 10s}}\n",
		`{"service":{"Name":"web","Port":80,"Checks":[{"TTL":"10s"}]}}`,
		"proxy: {tries: 2, retries: 1}\n", "proxy: {max_fail: 3}\n", "dns_config: {udp_answer_limit: 0}\n",
		"service: {name: a, Port: 1, port: 2}\n", "node_name: x\nNodeName: y\n",
		"", "~", "[1]", "x", "{", "proxy: ~\ndns_config: ~\nacl: ~\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		path := filepath.Join(t.TempDir(), "pier.yaml")
		load := func(b []byte) (agentConfig, error) {
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			c := defaultAgentConfig()
			return c, c.loadFile(path)
		}
		c, err := load(in)
		if err != nil {
			if msg := err.Error(); !strings.Contains(msg, path) || strings.Contains(msg, "\n") {
				t.Fatalf("%q: the error is not one line naming the file: %q", in, msg)
			}
			return
		}
		again, err := load(in)
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("%q read twice:\n%+v\n%+v, %v", in, c, again, err)
		}
		j, err := yaml.YAMLToJSON(in)
		if err != nil {
			t.Fatalf("%q loaded but is not YAML: %v", in, err)
		}
		asJSON, err := load(j)
		if err != nil || !reflect.DeepEqual(c, asJSON) {
			t.Fatalf("%q as JSON %q:\n%+v\n%+v, %v", in, j, c, asJSON, err)
		}
	})
}
