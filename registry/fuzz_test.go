package registry

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeService feeds arbitrary bytes to the decoder the HTTP API uses
// for /v1/agent/service/register, and what decodes to Build. Neither may
// panic, and whatever Build accepts must satisfy the invariants the rest of
// the agent (catalog, DNS, load balancer) relies on.
func FuzzDecodeService(f *testing.F) {
	seeds := []string{
		// The seed's own example.
		`{"ID":"redis1","Name":"redis","Tags":["master","v1"],"Address":"172.16.0.2","Port":8000}`,
		// What consul/api's client sends by default.
		`{"ID":"web1","Name":"web","Tags":["a"],"Port":8080,"Address":"10.0.0.1","Meta":{"version":"1.2"},"Weights":{"Passing":3,"Warning":1},"Check":null,"Checks":null}`,
		// A Check and Checks together.
		`{"Name":"api","Port":9000,"Check":{"HTTP":"http://127.0.0.1:9000/health","Interval":"10s","Timeout":"1s"},` +
			`"Checks":[{"CheckID":"api-tcp","TCP":"127.0.0.1:9000","Interval":"5s"},{"TTL":"30s","Status":"passing"},` +
			`{"Args":["/bin/true"],"Interval":"1m","DeregisterCriticalServiceAfter":"90m"},null]}`,
		// snake_case keys, as config files and some clients write them.
		`{"id":"db1","name":"db","tags":["primary"],"port":5432,"enable_tag_override":true,` +
			`"tagged_addresses":{"lan":{"address":"10.0.0.5","port":5432}},"meta":{"Some_Key":"v"},` +
			`"check":{"tcp":"10.0.0.5:5432","interval":"10s","deregister_critical_service_after":"1m","success_before_passing":2}}`,
		// Edge cases near the limits.
		`{"Name":"x","Port":0}`,
		`{"Name":"x","Port":65535,"Weights":{"Passing":0,"Warning":0}}`,
		`{"Name":"x","Check":{"TTL":1000000000}}`,
		`{"Name":"x","Check":{"HTTP":"http://x/","Interval":"zz"}}`,
		`{"Name":"x","Kind":"connect-proxy"}`,
		`{"Name":"x","Check":{},"Checks":[{}]}`,
		`{"Name":"x","Check":{"Interval":null,"Header":{}}}`,
		`{"Name":"x","Port":1e3}`,
		`[]`,
		`null`,
		`{"Name":"x"} {"Name":"y"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		def, err := DecodeService(data, false)
		if err != nil {
			if def != nil {
				t.Fatalf("DecodeService returned a definition with error %v", err)
			}
			if err.Error() == "" {
				t.Fatal("DecodeService returned an empty error message")
			}
			return
		}
		if def == nil {
			t.Fatal("DecodeService returned neither a definition nor an error")
		}
		svc, checks, err := def.Build()
		if err != nil {
			if err.Error() == "" {
				t.Fatal("Build returned an empty error message")
			}
			return
		}
		if svc.ID == "" || svc.Name == "" {
			t.Fatalf("built service has ID %q, Name %q", svc.ID, svc.Name)
		}
		if svc.Port < 0 || svc.Port > 65535 {
			t.Fatalf("built service has port %d", svc.Port)
		}
		if svc.Weights.Passing < 1 {
			t.Fatalf("built service has Weights.Passing %d", svc.Weights.Passing)
		}
		if svc.Weights.Warning < 0 {
			t.Fatalf("built service has Weights.Warning %d", svc.Weights.Warning)
		}
		seen := map[string]bool{}
		for _, c := range checks {
			if c.CheckID == "" {
				t.Fatal("built check has an empty CheckID")
			}
			if seen[c.CheckID] {
				t.Fatalf("two built checks share CheckID %q", c.CheckID)
			}
			seen[c.CheckID] = true
			if c.ServiceID != svc.ID || c.ServiceName != svc.Name {
				t.Fatalf("check %q is bound to %q/%q, want %q/%q", c.CheckID, c.ServiceID, c.ServiceName, svc.ID, svc.Name)
			}
			if c.Definition.Type() == "" {
				t.Fatalf("check %q has no type", c.CheckID)
			}
		}
	})
}

// FuzzKVKey: a key the KV store accepts reaches other nodes and the data
// dir (both JSON) unchanged, and a key it refuses for its encoding, if it
// ever arrived, is recognised as changed on the way rather than taken for
// another key.
func FuzzKVKey(f *testing.F) {
	for _, s := range []string{"u/key", "u/bad\xffkey", "u/real\ufffdkey", "\xed\xa0\x80", "caf\u00e9/\U0001F600", "a\x00b", "\u2028", "<&>", `"\u0041\"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		b, err := json.Marshal(Entry{Node: "n", Kind: KindKV, Key: key, Version: 1, KV: &KVValue{}})
		if err != nil {
			t.Fatal(err)
		}
		var e Entry
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatal(err)
		}
		switch {
		case ValidKey(key) == nil && (e.Key != key || e.keyChanged):
			t.Fatalf("accepted key %q came back as %q (changed %v)", key, e.Key, e.keyChanged)
		case !utf8.ValidString(key) && !e.keyChanged:
			t.Fatalf("key %q with invalid UTF-8 came back as %q, not marked as changed", key, e.Key)
		}
	})
}
