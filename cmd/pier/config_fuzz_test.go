package main

import (
	"encoding/json"
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
