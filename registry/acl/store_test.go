package acl

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry"
)

// Resolving a token on the request path allocates nothing while the ACL
// store is unchanged, API-made tokens included, and other KV writes do not
// rebuild the table.
func TestACLResolveAllocs(t *testing.T) {
	const mgmt, made = "root", "45a3bd52-07c7-47a4-52fd-0745e0cfe967"
	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	az, err := New(Config{Enabled: true, DefaultPolicy: "deny", InitialManagement: mgmt})
	if err != nil {
		t.Fatal(err)
	}
	if err := az.Attach(reg, nil); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	add := func(pattern string, h http.HandlerFunc, _ Perm) { mux.HandleFunc(pattern, h) }
	NewEndpoints(az, rcfg.NodeName, 1<<20, nil).Routes(add, add)
	r := httptest.NewRequest("PUT", "/v1/acl/token", strings.NewReader(`{"SecretID":"`+made+`"}`))
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("TokenCreate: %d %s", w.Code, w.Body)
	}
	if p := az.Resolve(made); p == nil || p.ServiceRead("x") {
		t.Fatalf("the API-made token: %+v", p)
	}
	for _, secret := range []string{mgmt, made, "unknown"} {
		if n := testing.AllocsPerRun(100, func() { az.Resolve(secret) }); n != 0 {
			t.Errorf("Resolve(%q) allocates %v times per call", secret, n)
		}
	}
	before := az.table.Load()
	reg.KVPut("app/x", []byte("1"), 0, nil)
	az.Resolve(made)
	after := az.table.Load()
	if after.kvIndex == before.kvIndex {
		t.Error("the table did not move to the new KV index")
	}
	if reflect.ValueOf(after.tokens).UnsafePointer() != reflect.ValueOf(before.tokens).UnsafePointer() {
		t.Error("an unrelated KV write rebuilt the token table")
	}
	reg.KVDelete("", true, nil) // spares the reserved namespace
	if az.Resolve(made) == nil {
		t.Error("a recursive delete of every key deleted the token")
	}
}

func BenchmarkACLResolve(b *testing.B) {
	az, err := New(Config{Enabled: true, InitialManagement: "root",
		Tokens: []Token{{Secret: "web", Rules: Rules{ServicePrefix: map[string]string{"web": "write"}}}}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		az.Resolve("web")
	}
}

// Once the registry has the servers' agreed state, the ACL objects are
// read from it: the gossip store's are no longer, even when the count and
// the highest index of the two happen to match.
func TestACLReadsAgreedStore(t *testing.T) {
	const gossipSecret, agreedSecret = "0c5ef0a6-6a4e-4f4a-9d1e-7d3c2b1a0f01", "0c5ef0a6-6a4e-4f4a-9d1e-7d3c2b1a0f02"
	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	az, err := New(Config{Enabled: true, DefaultPolicy: "deny"})
	if err != nil {
		t.Fatal(err)
	}
	if err := az.Attach(reg, nil); err != nil {
		t.Fatal(err)
	}
	tok := func(accessor, secret string) []byte {
		return []byte(`{"AccessorID":"` + accessor + `","SecretID":"` + secret + `","Policies":["` + managementPolicyID + `"]}`)
	}
	const acc1, acc2 = "1c5ef0a6-6a4e-4f4a-9d1e-7d3c2b1a0f01", "1c5ef0a6-6a4e-4f4a-9d1e-7d3c2b1a0f02"
	if _, err := reg.KVPut(aclTokenPrefix+acc1, tok(acc1, gossipSecret), 0, nil); err != nil {
		t.Fatal(err)
	}
	if p := az.Resolve(gossipSecret); p == nil || !p.Management() {
		t.Fatalf("the gossip token: %+v", p)
	}
	// With a writer of the servers, the gossip store's objects are not
	// read even before their state arrives.
	az2, _ := New(Config{Enabled: true, DefaultPolicy: "deny"})
	if err := az2.Attach(reg, nil); err != nil {
		t.Fatal(err)
	}
	az2.SetWriter(gossipWriter{reg})
	if az2.Resolve(gossipSecret) != nil {
		t.Error("with servers, a token of the gossip store resolves before their state arrived")
	}
	idx := reg.Snapshot().KVList(aclKVPrefix)[0].ModifyIndex
	reg.SetAgreed(registry.Agreed{Index: idx, KVIndex: idx, KV: registry.KVTree([]*registry.KVEntry{
		{Key: aclTokenPrefix + acc2, Value: tok(acc2, agreedSecret), CreateIndex: idx, ModifyIndex: idx},
	})})
	if az.Resolve(gossipSecret) != nil {
		t.Error("the gossip store's token still resolves once the agreed store is there")
	}
	if p := az.Resolve(agreedSecret); p == nil || !p.Management() {
		t.Errorf("the agreed store's token: %+v", p)
	}
	if p := az2.Resolve(agreedSecret); p == nil || !p.Management() {
		t.Errorf("the agreed store's token, with servers: %+v", p)
	}
}
