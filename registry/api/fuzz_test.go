package api_test

// Fuzz tests of the API's request bodies, through the real handler: a fresh
// registry and Server per input, served in-process with httptest. Every
// target asserts what a client relies on: no 5xx, a 400 says why, a refused
// request changes nothing, and an accepted one is read back as sent.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

// fuzzAgent is one agent (node1) holding services web1 (web) and db1 (db),
// TTL checks ttl1 (on web1) and dbttl (on db1) and a KV pair, behind its HTTP handler.
type fuzzAgent struct {
	reg *registry.Registry
	srv *api.Server
}

func newFuzzAgent(t testing.TB, mutate func(*api.Config)) *fuzzAgent {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = "node1"
	rcfg.Address = "127.0.0.1"
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	w := registry.Weights{Passing: 1, Warning: 1}
	if err := reg.RegisterService(registry.Service{ID: "web1", Name: "web", Tags: []string{"v1"}, Port: 80, Weights: w}, nil, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	ttl := registry.Check{CheckID: "ttl1", Name: "web ttl", ServiceID: "web1", Status: registry.StatusPassing,
		Definition: registry.CheckDefinition{TTL: registry.Duration(time.Minute)}}
	if err := reg.RegisterService(registry.Service{ID: "db1", Name: "db", Port: 5432, Weights: w}, nil, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	dbttl := registry.Check{CheckID: "dbttl", Name: "db ttl", ServiceID: "db1", Status: registry.StatusPassing,
		Definition: registry.CheckDefinition{TTL: registry.Duration(time.Minute)}}
	for _, c := range []registry.Check{ttl, dbttl} {
		if err := reg.RegisterCheck(c, registry.SourceAPI); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := reg.KVPut("app/x", []byte("v"), 0, nil); err != nil {
		t.Fatal(err)
	}
	acfg := api.DefaultConfig()
	acfg.Registry = reg
	if mutate != nil {
		mutate(&acfg)
	}
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	return &fuzzAgent{reg: reg, srv: srv}
}

func (a *fuzzAgent) do(method, path string, body []byte, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	rec := httptest.NewRecorder()
	a.srv.ServeHTTP(rec, req)
	return rec
}

// state is what the agent stores, as its own endpoints show it (with the
// management token when ACLs are on).
func (a *fuzzAgent) state(t *testing.T, token string) string {
	t.Helper()
	var b strings.Builder
	for _, p := range []string{"/v1/agent/services", "/v1/agent/checks", "/v1/kv/?recurse"} {
		rec := a.do("GET", p, nil, token)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", p, rec.Code, rec.Body)
		}
		b.WriteString(rec.Body.String())
	}
	return b.String()
}

// checkAnswer applies the rules every write answer follows. A refusal must
// leave state (taken before the request) as it was.
func (a *fuzzAgent) checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, body []byte, before string, allowed ...int) {
	t.Helper()
	if rec.Code >= 500 {
		t.Fatalf("%d %q for body %q", rec.Code, rec.Body, body)
	}
	if rec.Code != http.StatusOK && !containsInt(allowed, rec.Code) {
		t.Fatalf("unexpected %d %q for body %q", rec.Code, rec.Body, body)
	}
	if rec.Code == http.StatusOK {
		return
	}
	if strings.TrimSpace(rec.Body.String()) == "" {
		t.Fatalf("%d without a message for body %q", rec.Code, body)
	}
	if after := a.state(t, mgmtTok); after != before {
		t.Fatalf("refused with %d %q, but the state changed:\nbefore %s\nafter  %s", rec.Code, rec.Body, before, after)
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// FuzzServiceRegister: /v1/agent/service/register. An accepted body is
// served back by /v1/agent/service/<id> as the decoder read it,
// registering what was served back changes nothing (a fixed point), and
// /v1/agent/service/deregister/<id> removes it.
func FuzzServiceRegister(f *testing.F) {
	for _, s := range []string{
		`{"ID":"redis1","Name":"redis","Tags":["master","v1"],"Address":"172.16.0.2","Port":8000}`,
		`{"ID":"web1","Name":"web2","Port":81}`,
		`{"name":"db","id":"db1","port":5433,"meta":{"A_b":"c"},"tagged_addresses":{"lan":{"address":"10.0.0.1","port":1}}}`,
		`{"Name":"api","Port":9000,"Check":{"TTL":"10s"},"Checks":[{"CheckID":"ttl1","TTL":"5s"}]}`,
		`{"Name":"api","Check":{"Args":["/bin/true"],"Interval":"1s"}}`,
		`{"Name":"x","Weights":{"Passing":0,"Warning":-1}}`,
		`{"Name":"x","Port":65536}`,
		`{"Name":"x","EnableTagOverride":true,"Tags":["",""]}`,
		`{"Name":"consul"}`,
		`{"Name":"x","Meta":{"consul-x":"y"}}`,
		`{"Name":"x","ID":"a/b"}`,
		`{"Name":"x","Kind":"connect-proxy"}`,
		`{"Name":"web","name":"x"}`,
		`{}`, `[]`, `null`, ``, `{"Name":"x"}{}`, "{\"Name\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a := newFuzzAgent(t, nil)
		before := a.state(t, "")
		rec := a.do("PUT", "/v1/agent/service/register", body, "")
		a.checkAnswer(t, rec, body, before, http.StatusBadRequest)
		if rec.Code != http.StatusOK {
			return
		}
		def, err := registry.DecodeService(body, false)
		if err != nil {
			t.Fatalf("accepted %q, which does not decode: %v", body, err)
		}
		svc, _, err := def.Build()
		if err != nil {
			t.Fatalf("accepted %q, which does not build: %v", body, err)
		}
		got := a.do("GET", "/v1/agent/service/"+url.PathEscape(svc.ID), nil, "")
		if got.Code != http.StatusOK {
			t.Fatalf("registered %q, then GET %s: %d %s", body, svc.ID, got.Code, got.Body)
		}
		var read struct {
			ID, Service, Address string
			Port                 int
			Tags                 []string
			Meta                 map[string]string
		}
		if err := json.Unmarshal(got.Body.Bytes(), &read); err != nil {
			t.Fatal(err)
		}
		if read.ID != svc.ID || read.Service != svc.Name || read.Port != svc.Port || read.Address != svc.Address ||
			!equalStrings(read.Tags, svc.Tags) || !equalMaps(read.Meta, svc.Meta) {
			t.Fatalf("registered %q, read back %s", body, got.Body)
		}
		// What is read back, registered again, must leave the service as
		// it is.
		var full map[string]any
		if err := json.Unmarshal(got.Body.Bytes(), &full); err != nil {
			t.Fatal(err)
		}
		full["Name"] = full["Service"]
		for _, k := range []string{"Service", "ContentHash", "Datacenter"} {
			delete(full, k)
		}
		if full["Port"] == 0.0 {
			delete(full, "Port") // no port, as consul/api sends it (an explicit 0 is refused)
		}
		rereg, _ := json.Marshal(full)
		again := a.do("PUT", "/v1/agent/service/register", rereg, "")
		if again.Code != http.StatusOK {
			t.Fatalf("re-registering %s: %d %s", rereg, again.Code, again.Body)
		}
		if got2 := a.do("GET", "/v1/agent/service/"+url.PathEscape(svc.ID), nil, ""); got2.Body.String() != got.Body.String() {
			t.Fatalf("re-registering changed the service:\nfirst  %s\nsecond %s", got.Body, got2.Body)
		}
		// And it can be deregistered by its ID.
		if rec := a.do("PUT", "/v1/agent/service/deregister/"+url.PathEscape(svc.ID), nil, ""); rec.Code != http.StatusOK {
			t.Fatalf("deregistering %q: %d %s", svc.ID, rec.Code, rec.Body)
		}
		if _, ok := a.reg.Snapshot().NodeService("node1", svc.ID); ok {
			t.Fatalf("service %q is still there after its deregistration", svc.ID)
		}
	})
}

func equalStrings(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

func equalMaps(a, b map[string]string) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

// FuzzCheckRegister: /v1/agent/check/register. An accepted check is listed
// by /v1/agent/checks under its ID, with its name and service, and
// /v1/agent/check/deregister/<id> removes it.
func FuzzCheckRegister(f *testing.F) {
	for _, s := range []string{
		`{"Name":"mem","TTL":"15s"}`,
		`{"ID":"web-http","Name":"web http","ServiceID":"web1","HTTP":"http://127.0.0.1/","Interval":"10s","Timeout":"1s"}`,
		`{"check_id":"t","name":"tcp","service_id":"db1","tcp":"127.0.0.1:5432","interval":"5s"}`,
		`{"Name":"ttl1","CheckID":"ttl1","TTL":"1s","Status":"warning"}`,
		`{"Name":"x","ServiceID":"nope","TTL":"1s"}`,
		`{"Name":"x","Args":["/bin/true"],"Interval":"1s"}`,
		`{"Name":"x","TTL":"-1s"}`,
		`{"Name":"x","TTL":1e99}`,
		`{"Name":"x","Status":"bogus","TTL":"1s"}`,
		`{"Name":"serf","CheckID":"serfHealth","TTL":"1s"}`,
		`{"Name":"x","HTTP":"http://x","Interval":"1s","Header":{"A":["b"]},"Method":"POST","Body":"{}"}`,
		`{"Name":"x","ServiceID":"web1","service_id":"db1","TTL":"1s"}`,
		`{"Name":""}`, `{}`, `[1]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a := newFuzzAgent(t, nil)
		before := a.state(t, "")
		rec := a.do("PUT", "/v1/agent/check/register", body, "")
		a.checkAnswer(t, rec, body, before, http.StatusBadRequest)
		if rec.Code != http.StatusOK {
			return
		}
		def, err := registry.DecodeCheck(body, false)
		if err != nil {
			t.Fatalf("accepted %q, which does not decode: %v", body, err)
		}
		c, err := def.BuildCheck()
		if err != nil {
			t.Fatalf("accepted %q, which does not build: %v", body, err)
		}
		var checks map[string]struct {
			CheckID, Name, ServiceID, Status string
		}
		if err := json.Unmarshal(a.do("GET", "/v1/agent/checks", nil, "").Body.Bytes(), &checks); err != nil {
			t.Fatal(err)
		}
		got, ok := checks[c.CheckID]
		if !ok || got.CheckID != c.CheckID || got.Name != c.Name || got.ServiceID != c.ServiceID {
			t.Fatalf("registered %q (%+v), listed %+v (%v)", body, c, got, ok)
		}
		if _, err := registry.ParseStatus(got.Status); err != nil {
			t.Fatalf("registered %q, listed with status %q", body, got.Status)
		}
		if rec := a.do("PUT", "/v1/agent/check/deregister/"+url.PathEscape(c.CheckID), nil, ""); rec.Code != http.StatusOK {
			t.Fatalf("deregistering check %q: %d %s", c.CheckID, rec.Code, rec.Body)
		}
	})
}

// FuzzCheckUpdate: /v1/agent/check/update/ttl1. An accepted update sets the
// status and (cut to 4096 bytes) the output it carries.
func FuzzCheckUpdate(f *testing.F) {
	for _, s := range []string{
		`{"Status":"passing","Output":"ok"}`,
		`{"Status":"critical"}`,
		`{"status":"warning","output":"slow"}`,
		`{"Status":"Passing"}`,
		`{"Status":""}`,
		`{"Status":"warning","Output":"` + strings.Repeat("x", 5000) + `"}`,
		`{"Status":"warning","Output":"` + strings.Repeat("é", 2100) + `"}`,
		`{"Status":"passing","Output":null}`,
		`{"Status":7}`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a := newFuzzAgent(t, nil)
		before := a.state(t, "")
		rec := a.do("PUT", "/v1/agent/check/update/ttl1", body, "")
		a.checkAnswer(t, rec, body, before, http.StatusBadRequest)
		if rec.Code != http.StatusOK {
			return
		}
		var u struct{ Status, Output string }
		if err := json.Unmarshal(body, &u); err != nil {
			t.Fatalf("accepted %q, which does not decode: %v", body, err)
		}
		var checks map[string]struct{ Status, Output string }
		if err := json.Unmarshal(a.do("GET", "/v1/agent/checks", nil, "").Body.Bytes(), &checks); err != nil {
			t.Fatal(err)
		}
		// The output is kept whole up to 4096 bytes, and cut there (not
		// inside a character) when longer.
		got := checks["ttl1"]
		cut := len(u.Output) > 4096 && len(got.Output) > 4096-utf8.UTFMax && len(got.Output) <= 4096 &&
			strings.HasPrefix(u.Output, got.Output) && utf8.ValidString(got.Output)
		if got.Status != u.Status || got.Output != u.Output && !cut {
			t.Fatalf("update %q left %q %q", body, got.Status, got.Output)
		}
	})
}

// keyrings is a cluster that records the keyring operations it is asked to
// do.
type keyrings struct{ ops []string }

func (k *keyrings) Members() []registry.Member { return nil }
func (k *keyrings) Join([]string) (int, error) { return 0, nil }
func (k *keyrings) Leave() error               { return nil }
func (k *keyrings) ForceLeave(string) error    { return nil }
func (k *keyrings) Prune(string) error         { return nil }
func (k *keyrings) KeyringOp(op, key string) ([]api.KeyringAnswer, error) {
	k.ops = append(k.ops, op+" "+key)
	return []api.KeyringAnswer{{Node: "node1", Keys: []string{key}, Primary: key}}, nil
}

// FuzzKeyring: the keyring's install, use and remove. The key the cluster
// is asked to act on is exactly the body's Key; a body without one is a 400
// and reaches no node.
func FuzzKeyring(f *testing.F) {
	for _, s := range []string{
		`{"Key":"pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="}`,
		`{"key":"x"}`,
		`{"Key":""}`,
		`{"Key":1}`,
		`{"Key":"a","key":"b"}`,
		`{"Key":"\u0000"}`,
		`[]`, `null`, ``,
	} {
		for m := range byte(3) {
			f.Add([]byte(s), m)
		}
	}
	methods := []struct{ method, op string }{{"POST", "install"}, {"PUT", "use"}, {"DELETE", "remove"}}
	f.Fuzz(func(t *testing.T, body []byte, m byte) {
		k := &keyrings{}
		a := newFuzzAgent(t, func(c *api.Config) { c.Cluster = k })
		before := a.state(t, "")
		op := methods[int(m)%len(methods)]
		rec := a.do(op.method, "/v1/operator/keyring", body, "")
		a.checkAnswer(t, rec, body, before, http.StatusBadRequest)
		var want struct{ Key string }
		decodes := json.Unmarshal(body, &want) == nil && want.Key != ""
		switch {
		case decodes && (rec.Code != http.StatusOK || len(k.ops) != 1 || k.ops[0] != op.op+" "+want.Key):
			t.Fatalf("%s %q: %d, the cluster was asked %q", op.method, body, rec.Code, k.ops)
		case !decodes && (rec.Code != http.StatusBadRequest || len(k.ops) != 0):
			t.Fatalf("%s %q (no key): %d, the cluster was asked %q", op.method, body, rec.Code, k.ops)
		}
	})
}

// FuzzACLRegister: with ACLs on, a token that may write services named
// web* (but not web-secret*) and nothing on the node registers a service or
// a check. Whatever it changes, every service and check added, replaced or
// removed belongs (before and after) to a service the token may write: what
// the ACL gate reads from the body is what the handler registers.
func FuzzACLRegister(f *testing.F) {
	for _, s := range []string{
		`{"Name":"web","ID":"web2","Port":80}`,
		`{"Name":"db","Port":80}`,
		`{"Name":"web-secret-1"}`,
		`{"name":"web","Name":"db"}`,
		`{"Name":"web","na_me":"db"}`,
		`{"Name":"web","Name":"db"}`,
		`{"Name":"web","ID":"db1"}`,
		`{"Name":"web","Check":{"TTL":"1s","ServiceID":"db1"}}`,
		`{"Name":"web","Checks":[{"CheckID":"ttl1","TTL":"1s"}]}`,
		`{"Name":"web","Checks":[{"CheckID":"dbttl","TTL":"1s"}]}`,
	} {
		f.Add([]byte(s), false)
	}
	for _, s := range []string{
		`{"Name":"c","ServiceID":"web1","TTL":"1s"}`,
		`{"Name":"c","ServiceID":"db1","TTL":"1s"}`,
		`{"Name":"c","TTL":"1s"}`,
		`{"Name":"c","ServiceID":"web1","service_id":"db1","TTL":"1s"}`,
		`{"Name":"c","serviceid":"db1","ServiceID":"web1","TTL":"1s"}`,
		`{"Name":"ttl1","ServiceID":"web1","TTL":"1s"}`,
		`{"Name":"c","CheckID":"dbttl","ServiceID":"web1","TTL":"1s"}`,
	} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, check bool) {
		a := newFuzzAgent(t, func(c *api.Config) { c.ACL = testACL() })
		before := a.state(t, mgmtTok)
		was := fuzzOwned(a.reg)
		path := "/v1/agent/service/register"
		if check {
			path = "/v1/agent/check/register"
		}
		rec := a.do("PUT", path, body, webTok)
		a.checkAnswer(t, rec, body, before, http.StatusBadRequest, http.StatusForbidden)
		if rec.Code != http.StatusOK {
			return
		}
		is := fuzzOwned(a.reg)
		mayWrite := func(service string) bool {
			return strings.HasPrefix(service, "web") && !strings.HasPrefix(service, "web-secret")
		}
		for k, v := range is {
			if old, ok := was[k]; ok && old.entry == v.entry {
				continue
			}
			if !mayWrite(v.service) || was[k].entry != "" && !mayWrite(was[k].service) {
				t.Fatalf("the web token's %s %q changed %s (of service %q, was %q)", path, body, k, v.service, was[k].service)
			}
		}
		for k, v := range was {
			if _, ok := is[k]; !ok && !mayWrite(v.service) {
				t.Fatalf("the web token's %s %q removed %s (of service %q)", path, body, k, v.service)
			}
		}
	})
}

// owned is one service or check of node1 as stored, and the service it
// belongs to ("" for a node check).
type owned struct{ entry, service string }

func fuzzOwned(reg *registry.Registry) map[string]owned {
	snap := reg.Snapshot()
	out := map[string]owned{}
	for _, e := range snap.NodeServices("node1") {
		b, _ := json.Marshal(e)
		out["service "+e.ID] = owned{string(b), e.Name}
	}
	for _, c := range snap.AllNodeChecks("node1") {
		b, _ := json.Marshal(c)
		out["check "+c.CheckID] = owned{string(b), c.ServiceName}
	}
	return out
}

// FuzzFilter: ?filter= on every endpoint that takes it answers 200 with a
// subset of the unfiltered answer, or 400 with a message that starts with
// "filter:"; never a 5xx or a panic.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{`Service == web`, `"v1" in Tags`, `Meta.x == y`, `ServiceTags contains "v1" and not (Node == x)`,
		`Service.Tags is empty`, `Name matches "^w.*"`, `Nope == 1`, `(`, `Service ==`, `Checks.Status == passing`} {
		f.Add(s)
	}
	a := newFuzzAgent(f, nil)
	paths := []string{"/v1/agent/services", "/v1/agent/checks", "/v1/catalog/services", "/v1/catalog/service/web",
		"/v1/catalog/nodes", "/v1/catalog/node/node1", "/v1/catalog/node-services/node1", "/v1/health/service/db", "/v1/health/checks/web",
		"/v1/health/node/node1", "/v1/health/state/any"}
	f.Fuzz(func(t *testing.T, expr string) {
		for _, p := range paths {
			rec := a.do("GET", p+"?filter="+url.QueryEscape(expr), nil, "")
			switch {
			case rec.Code == http.StatusOK:
				all := a.do("GET", p, nil, "")
				if len(rec.Body.String()) > len(all.Body.String()) {
					t.Fatalf("%s?filter=%q answered more than without it:\n%s\n%s", p, expr, rec.Body, all.Body)
				}
			case rec.Code == http.StatusBadRequest:
				if !strings.HasPrefix(rec.Body.String(), "filter: ") {
					t.Fatalf("%s?filter=%q: 400 %q does not start with filter:", p, expr, rec.Body)
				}
			default:
				t.Fatalf("%s?filter=%q: %d %q", p, expr, rec.Code, rec.Body)
			}
		}
	})
}
