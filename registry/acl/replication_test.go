package acl

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

// aclDC is one datacenter's ACLs in process: a registry (its gossip KV
// store is the state) and the endpoints over it.
type aclDC struct {
	reg *registry.Registry
	az  *Authorizer
	mux *http.ServeMux
}

func newACLDC(t *testing.T, dc string, cfg Config) *aclDC {
	t.Helper()
	rcfg := registry.DefaultConfig()
	rcfg.NodeName, rcfg.Address, rcfg.Datacenter = "s-"+dc, "127.0.0.1", dc
	reg, err := registry.New(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Enabled, cfg.DefaultPolicy, cfg.InitialManagement = true, "deny", "root"
	az, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := az.Attach(reg, nil); err != nil {
		t.Fatal(err)
	}
	d := &aclDC{reg: reg, az: az, mux: http.NewServeMux()}
	add := func(pattern string, h http.HandlerFunc, _ Perm) { d.mux.HandleFunc(pattern, h) }
	NewEndpoints(az, rcfg.NodeName, 1<<20, nil).Routes(add, add)
	return d
}

// do serves a request as the API would, the token's policy resolved.
func (d *aclDC) do(ctx context.Context, method, path, token, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequestWithContext(ctx, method, path, strings.NewReader(body))
	r.Header.Set("X-Consul-Token", token)
	if p := d.az.Resolve(token); p != nil {
		r = WithPolicy(r, p)
	}
	w := httptest.NewRecorder()
	d.mux.ServeHTTP(w, r)
	return w
}

// inProcess is a Primary that serves in the primary's endpoints; down
// makes it unreachable.
type inProcess struct {
	primary *aclDC
	mu      sync.Mutex
	down    bool
}

func (p *inProcess) reachable() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.down
}

func (p *inProcess) Forward(w http.ResponseWriter, r *http.Request, dc string) {
	res := p.primary.do(r.Context(), r.Method, r.URL.RequestURI(), RequestToken(r), "")
	w.WriteHeader(res.Code)
	w.Write(res.Body.Bytes())
}

func (p *inProcess) Get(ctx context.Context, dc, pathQuery, token string) (int, []byte, error) {
	if !p.reachable() {
		return 0, nil, context.DeadlineExceeded
	}
	res := p.primary.do(ctx, "GET", pathQuery, token, "")
	if !p.reachable() {
		return 0, nil, context.DeadlineExceeded // the answer is lost on the way
	}
	return res.Code, res.Body.Bytes(), nil
}

// TestReplicationRounds: a secondary's leader copies the primary's
// policies, roles and global tokens, leaves its local tokens alone,
// deletes what the primary deletes, keeps what it has while the primary
// cannot be reached (LastError set), and stops when it no longer leads.
func TestReplicationRounds(t *testing.T) {
	dc1 := newACLDC(t, "dc1", Config{})
	dc2 := newACLDC(t, "dc2", Config{PrimaryDatacenter: "dc1", TokenReplication: true, Replication: "root"})
	link := &inProcess{primary: dc1}
	dc2.az.SetPrimary(link)
	ctx := context.Background()
	mustOK := func(d *aclDC, method, path, body string) map[string]any {
		t.Helper()
		w := d.do(ctx, method, path, "root", body)
		if w.Code != 200 {
			t.Fatalf("%s %s: %d %s", method, path, w.Code, w.Body)
		}
		var out map[string]any
		json.Unmarshal(w.Body.Bytes(), &out)
		return out
	}
	pol := mustOK(dc1, "PUT", "/v1/acl/policy", `{"Name":"web","Rules":"service_prefix \"web\" { policy = \"read\" }"}`)
	role := mustOK(dc1, "PUT", "/v1/acl/role", `{"Name":"reader","Policies":[{"Name":"web"}]}`)
	g := mustOK(dc1, "PUT", "/v1/acl/token", `{"Roles":[{"ID":"`+role["ID"].(string)+`"}]}`)
	mustOK(dc1, "PUT", "/v1/acl/token", `{"Local":true,"SecretID":"6b1c6e4e-3c1a-4f5e-9d7e-1a2b3c4d5e6f"}`)
	// dc2's own local token, made before replication starts.
	local := mustOK(dc2, "PUT", "/v1/acl/token", `{"Local":true}`)

	var leading sync.Mutex
	lead := true
	leads := func() bool { leading.Lock(); defer leading.Unlock(); return lead }
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- dc2.az.RunReplication(rctx, leads) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// A round done first: before it, dc2 asks dc1 about a token it does
	// not hold (remote resolution), so the token alone does not show that
	// replication ran.
	eventually.True(t, 5*time.Second, "a replication round done", func() bool {
		return !dc2.az.ReplicationStatus().LastSuccess.IsZero()
	})
	secret := g["SecretID"].(string)
	eventually.True(t, 5*time.Second, "dc2 has dc1's global token, through its role and policy", func() bool {
		p := dc2.az.Resolve(secret)
		return p != nil && p.ServiceRead("web") && !p.ServiceRead("db")
	})
	if dc2.az.Resolve("6b1c6e4e-3c1a-4f5e-9d7e-1a2b3c4d5e6f") != nil {
		t.Error("dc1's local token reached dc2")
	}
	if dc2.az.Resolve(local["SecretID"].(string)) == nil {
		t.Error("dc2's local token is gone after replication")
	}
	if dc2.az.Resolve("0e7a2a3c-5d4c-4c38-9f3e-2a1d4c6b8e90") != nil {
		t.Error("a token nobody has resolves in dc2")
	}
	st := dc2.az.ReplicationStatus()
	if !st.Enabled || !st.Running || st.SourceDatacenter != "dc1" || st.ReplicationType != "tokens" || st.LastSuccess.IsZero() {
		t.Errorf("status: %+v", st)
	}

	// A delete in dc1 reaches dc2; while dc1 cannot be reached, dc2 keeps
	// what it has.
	mustOK(dc1, "DELETE", "/v1/acl/policy/"+pol["ID"].(string), "")
	eventually.True(t, 5*time.Second, "the policy deleted in dc1 goes in dc2", func() bool {
		p := dc2.az.Resolve(secret)
		return p != nil && !p.ServiceRead("web")
	})
	link.mu.Lock()
	link.down = true
	link.mu.Unlock()
	mustOK(dc1, "DELETE", "/v1/acl/token/"+g["AccessorID"].(string), "")
	eventually.True(t, 5*time.Second, "the status shows the error", func() bool {
		return dc2.az.ReplicationStatus().LastErrorMessage != ""
	})
	if dc2.az.Resolve(secret) == nil {
		t.Error("dc2 dropped a token while dc1 could not be reached")
	}
	link.mu.Lock()
	link.down = false
	link.mu.Unlock()
	eventually.True(t, 10*time.Second, "the delete arrives once dc1 is back", func() bool { return dc2.az.Resolve(secret) == nil })

	leading.Lock()
	lead = false
	leading.Unlock()
	eventually.True(t, 5*time.Second, "replication stops with the leadership", func() bool { return !dc2.az.ReplicationStatus().Running })
}

// fixedPrimary answers every round with body.
type fixedPrimary struct{ body string }

func (f fixedPrimary) Forward(w http.ResponseWriter, _ *http.Request, _ string) {
	w.WriteHeader(http.StatusInternalServerError)
}

func (f fixedPrimary) Get(context.Context, string, string, string) (int, []byte, error) {
	return 200, []byte(f.body), nil
}

// TestReplicationRefusesOtherKeys: an answer of the primary that holds a
// key replication does not manage (the bootstrap marker, a local token)
// writes nothing, and the status says why.
func TestReplicationRefusesOtherKeys(t *testing.T) {
	dc2 := newACLDC(t, "dc2", Config{PrimaryDatacenter: "dc1", TokenReplication: true, Replication: "root"})
	for _, obj := range []string{
		`{"Key":"_pier/acl/bootstrap","Value":"e30="}`,
		`{"Key":"_pier/acl/token/6b1c6e4e-3c1a-4f5e-9d7e-1a2b3c4d5e6f","Value":"` + "eyJMb2NhbCI6dHJ1ZX0=" + `"}`, // {"Local":true}
		`{"Key":"app/config","Value":"e30="}`,
	} {
		dc2.az.SetPrimary(fixedPrimary{body: `{"Index":5,"Hash":"h","Tokens":true,"Objects":[` + obj + `]}`})
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- dc2.az.RunReplication(ctx, func() bool { return true }) }()
		eventually.True(t, 5*time.Second, "the round fails", func() bool {
			return strings.Contains(dc2.az.ReplicationStatus().LastErrorMessage, "not replicated")
		})
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for _, prefix := range []string{aclKVPrefix, "app/"} {
			for _, e := range dc2.reg.Snapshot().KVList(prefix) {
				t.Errorf("%s: the answer wrote %s", obj, e.Key)
			}
		}
		dc2.az.repl.mu.Lock()
		dc2.az.repl.status.LastErrorMessage = ""
		dc2.az.repl.mu.Unlock()
	}
}

// countingPrimary counts the questions about tokens.
type countingPrimary struct {
	*inProcess
	mu   sync.Mutex
	asks int
}

func (c *countingPrimary) Get(ctx context.Context, dc, pathQuery, token string) (int, []byte, error) {
	if strings.HasPrefix(pathQuery, tokenSelfPath) {
		c.mu.Lock()
		c.asks++
		c.mu.Unlock()
	}
	return c.inProcess.Get(ctx, dc, pathQuery, token)
}

func (c *countingPrimary) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.asks
}

// TestUnreplicatedTokens: before a secondary's first round of token
// replication a token it does not have is asked of the primary (its
// policy compiled from the secondary's own replicated policies, the
// answer kept for token_ttl); once the round has written its marker, an
// unknown token is not found without asking, as Consul's resolver.
func TestUnreplicatedTokens(t *testing.T) {
	dc1 := newACLDC(t, "dc1", Config{})
	dc2 := newACLDC(t, "dc2", Config{PrimaryDatacenter: "dc1", TokenReplication: true, Replication: "root", TokenTTL: time.Hour})
	link := &countingPrimary{inProcess: &inProcess{primary: dc1}}
	dc2.az.SetPrimary(link)
	ctx := context.Background()
	w := dc1.do(ctx, "PUT", "/v1/acl/token", "root", `{"Policies":[{"ID":"`+managementPolicyID+`"}]}`)
	var tok struct{ SecretID string }
	if w.Code != 200 || json.Unmarshal(w.Body.Bytes(), &tok) != nil {
		t.Fatalf("token: %d %s", w.Code, w.Body)
	}
	if p := dc2.az.Resolve(tok.SecretID); p == nil || !p.ACLWrite() {
		t.Fatalf("before replication, dc1's management token in dc2: %+v", p)
	}
	dc2.az.Resolve(tok.SecretID)
	if n := link.count(); n != 1 {
		t.Errorf("asked dc1 %d times for one token within its TTL, want 1", n)
	}
	if dc2.az.Resolve("0e7a2a3c-5d4c-4c38-9f3e-2a1d4c6b8e90") != nil {
		t.Error("a token dc1 does not know resolves in dc2")
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- dc2.az.RunReplication(rctx, func() bool { return true }) }()
	defer func() { stop(); <-done }()
	eventually.True(t, 5*time.Second, "the first round writes its marker", func() bool { return dc2.az.current().tokensReplicated })
	before := link.count()
	if dc2.az.Resolve("1e7a2a3c-5d4c-4c38-9f3e-2a1d4c6b8e90") != nil || link.count() != before {
		t.Errorf("after the first round an unknown token was asked of dc1 (%d asks, %d before)", link.count(), before)
	}
	if dc2.az.Resolve(tok.SecretID) == nil {
		t.Error("the replicated token does not resolve in dc2")
	}
}
