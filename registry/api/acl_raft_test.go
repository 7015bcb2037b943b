package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

// startMirrors keeps every agent's registry a copy of the servers' agreed
// state, as the agent's wiring does: RunMirror on the servers,
// FollowMirror on the clients; stopped before the agents.
func startMirrors(t *testing.T, servers []*raftAgent, clients ...*raftAgent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tr := &http.Transport{}
	ports := func() []string {
		var out []string
		for _, s := range servers {
			if !s.stopped.Load() {
				out = append(out, s.port)
			}
		}
		return out
	}
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raft.RunMirror(ctx, s.node, s.reg)
		}()
	}
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raft.FollowMirror(ctx, ports, c.reg, &http.Client{Transport: tr}, nil)
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		tr.CloseIdleConnections()
	})
}

// startACLGroup is startGroup with ACLs on every agent (each with its own
// bootstrap reset file) and the mirrors running.
func startACLGroup(t *testing.T, cfg api.ACLConfig) (servers []*raftAgent, client *raftAgent, resetFile map[string]string) {
	t.Helper()
	dir := t.TempDir()
	resetFile = map[string]string{}
	on := func(name string) func(*api.Config) {
		resetFile[name] = filepath.Join(dir, name+"-acl-bootstrap-reset")
		return func(c *api.Config) {
			c.ACL = cfg
			c.ACL.BootstrapResetFile = resetFile[name]
		}
	}
	var ports []string
	for i := range 3 {
		name := fmt.Sprintf("s%d", i)
		servers = append(servers, startRaftAgent(t, name, true, nil, on(name)))
		ports = append(ports, servers[i].port)
	}
	var members []raft.Server
	for _, s := range servers {
		members = append(members, raft.Server{ID: s.name, Address: s.port, Voter: true})
	}
	for _, s := range servers {
		if err := s.node.Bootstrap(members); err != nil {
			t.Fatal(err)
		}
		for _, o := range append(servers, &raftAgent{name: "c0"}) {
			if o.name != s.name {
				s.reg.SetMemberStatus(o.name, "127.0.0.1", registry.MemberAlive)
			}
		}
	}
	client = startRaftAgent(t, "c0", false, func() []string { return ports }, on("c0"))
	eventually.True(t, 10*time.Second, "a leader", func() bool { return leaderOf(servers) != nil })
	startMirrors(t, servers, client)
	return servers, client, resetFile
}

func raftWithToken(t *testing.T, a *raftAgent, token string) *consul.Client {
	t.Helper()
	c, err := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(a.base, "http://"), Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tokenCall makes one request with a token and answers its status and body.
func tokenCall(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

// A token made through a client agent lives in the servers' Raft state
// (not the gossip store) and is usable on every agent once mirrored; the
// KV API's recursive delete of everything and a txn get-tree of everything
// neither delete nor show it.
func TestRaftACLObjectsAcrossAgents(t *testing.T) {
	cfg := testACL()
	servers, client, _ := startACLGroup(t, cfg)
	mgmt := raftWithToken(t, client, mgmtTok)
	pol, _, err := mgmt.ACL().PolicyCreate(&consul.ACLPolicy{Name: "app-read", Rules: `key_prefix "app/" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatalf("policy create through the client: %v", err)
	}
	tok, _, err := mgmt.ACL().TokenCreate(&consul.ACLToken{Description: "reader", Policies: []*consul.ACLTokenPolicyLink{{Name: "app-read"}}}, nil)
	if err != nil {
		t.Fatalf("token create through the client: %v", err)
	}
	if len(tok.Policies) != 1 || tok.Policies[0].ID != pol.ID || tok.CreateIndex == 0 {
		t.Fatalf("created token: %+v", tok)
	}
	ld := leaderOf(servers)
	if e, ok := ld.node.State().KV(registry.AgreedReservedPrefix + "token/" + tok.AccessorID); !ok || e.ModifyIndex != tok.ModifyIndex {
		t.Fatalf("the token is not in the Raft state with its index: %+v %v", e, ok)
	}
	// The agent that forwarded the write answered once its own mirror had
	// it: the token works there at once.
	if code, body := tokenCall(t, "GET", client.base+"/v1/acl/token/self", tok.SecretID, ""); code != 200 {
		t.Fatalf("the new token on the agent it was made through: %d %s", code, body)
	}
	for _, a := range append(servers, client) {
		eventually.True(t, 10*time.Second, "the token resolves on "+a.name, func() bool {
			code, _ := tokenCall(t, "GET", a.base+"/v1/acl/token/self", tok.SecretID, "")
			return code == 200
		})
		self, _, err := raftWithToken(t, a, tok.SecretID).ACL().TokenReadSelf(nil)
		if err != nil || self.AccessorID != tok.AccessorID {
			t.Fatalf("%s: token self: %+v %v", a.name, self, err)
		}
	}
	// The token grants what its policy says, on another agent than the
	// one it was made through.
	follower := servers[0]
	if follower == ld {
		follower = servers[1]
	}
	if code, body := tokenCall(t, "PUT", follower.base+"/v1/kv/app/x", tok.SecretID, "v"); code != 403 {
		t.Fatalf("a read token wrote: %d %s", code, body)
	}
	if code, body := tokenCall(t, "PUT", follower.base+"/v1/kv/app/x", mgmtTok, "v"); code != 200 {
		t.Fatalf("management write: %d %s", code, body)
	}
	if code, body := tokenCall(t, "GET", follower.base+"/v1/kv/app/x", tok.SecretID, ""); code != 200 {
		t.Fatalf("read token read: %d %s", code, body)
	}

	// An update through a follower and a delete through the client, each
	// seen everywhere.
	tok.Description = "reader v2"
	if _, _, err := raftWithToken(t, follower, mgmtTok).ACL().TokenUpdate(tok, nil); err != nil {
		t.Fatalf("update through a follower: %v", err)
	}
	if got, _, err := raftWithToken(t, follower, mgmtTok).ACL().TokenRead(tok.AccessorID, nil); err != nil || got.Description != "reader v2" {
		t.Fatalf("the update on the follower it was made through: %+v %v", got, err)
	}
	eventually.True(t, 10*time.Second, "the update reaches the client", func() bool {
		got, _, err := mgmt.ACL().TokenRead(tok.AccessorID, nil)
		return err == nil && got.Description == "reader v2"
	})

	// The user's KV cannot reach the ACL store.
	if code, body := tokenCall(t, "DELETE", client.base+"/v1/kv/?recurse", mgmtTok, ""); code != 200 {
		t.Fatalf("recursive delete of everything: %d %s", code, body)
	}
	if code, body := tokenCall(t, "PUT", client.base+"/v1/txn", mgmtTok, `[{"KV":{"Verb":"get-tree","Key":""}},{"KV":{"Verb":"delete-tree","Key":"_"}}]`); code != 200 || strings.Contains(body, "_pier") {
		t.Fatalf("txn over everything: %d %s", code, body)
	}
	if _, ok := ld.node.State().KV(registry.AgreedReservedPrefix + "token/" + tok.AccessorID); !ok {
		t.Fatal("a recursive KV delete took the ACL store with it")
	}
	if code, body := tokenCall(t, "PUT", client.base+"/v1/kv/_pier/acl/token/x", mgmtTok, "{}"); code != 400 || !strings.Contains(body, "reserved") {
		t.Fatalf("a KV write of an ACL key: %d %s", code, body)
	}

	if _, err := mgmt.ACL().TokenDelete(tok.AccessorID, nil); err != nil {
		t.Fatalf("delete through the client: %v", err)
	}
	if code, body := tokenCall(t, "GET", client.base+"/v1/acl/token/self", tok.SecretID, ""); code != 403 {
		t.Fatalf("the deleted token on the agent it was deleted through: %d %s", code, body)
	}
	for _, a := range append(servers, client) {
		eventually.True(t, 10*time.Second, "the deleted token is unknown on "+a.name, func() bool {
			code, _ := tokenCall(t, "GET", a.base+"/v1/acl/token/self", tok.SecretID, "")
			return code == 403
		})
	}
}

var resetIndexRE = regexp.MustCompile(`ACL bootstrap no longer allowed \(reset index: (\d+)\)`)

// PUT /v1/acl/bootstrap answers a management token once per cluster: a
// second call, through another agent, is Consul's 403 with the reset
// index; writing that index into the leader's reset file allows one more,
// and the file is gone after.
func TestRaftACLBootstrap(t *testing.T) {
	cfg := api.ACLConfig{Enabled: true, DefaultPolicy: "deny"}
	servers, client, resetFile := startACLGroup(t, cfg)
	if code, body := tokenCall(t, "GET", client.base+"/v1/acl/tokens", "", ""); code != 403 {
		t.Fatalf("anonymous list before the bootstrap: %d %s", code, body)
	}
	tok, _, err := client.client.ACL().Bootstrap()
	if err != nil {
		t.Fatalf("bootstrap through the client: %v", err)
	}
	if tok.SecretID == "" || tok.AccessorID == "" || tok.Local || tok.CreateTime.IsZero() ||
		len(tok.Policies) != 1 || tok.Policies[0].Name != "global-management" || tok.Policies[0].ID != "00000000-0000-0000-0000-000000000001" {
		t.Fatalf("bootstrap token: %+v", tok)
	}
	ld := leaderOf(servers)
	marker, ok := ld.node.State().KV(registry.AgreedReservedPrefix + "bootstrap")
	if !ok {
		t.Fatal("no bootstrap marker in the Raft state")
	}
	other := servers[0]
	if other == ld {
		other = servers[1]
	}
	code, body := tokenCall(t, "PUT", other.base+"/v1/acl/bootstrap", "", "")
	m := resetIndexRE.FindStringSubmatch(body)
	if code != 403 || m == nil || !strings.HasPrefix(body, "Permission denied: ") || m[1] != strconv.FormatUint(marker.ModifyIndex, 10) {
		t.Fatalf("second bootstrap: %d %q (marker index %d)", code, body, marker.ModifyIndex)
	}
	for _, a := range append(servers, client) {
		eventually.True(t, 10*time.Second, "the bootstrap token manages "+a.name, func() bool {
			code, _ := tokenCall(t, "GET", a.base+"/v1/acl/tokens", tok.SecretID, "")
			return code == 200
		})
	}

	// The reset, on the leader.
	if err := os.WriteFile(resetFile[ld.name], []byte("12345\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, body := tokenCall(t, "PUT", client.base+"/v1/acl/bootstrap", "", ""); code != 500 || !strings.Contains(body, "Invalid bootstrap reset index (specified 12345") {
		t.Fatalf("bootstrap with a wrong reset index: %d %q", code, body)
	}
	if _, err := os.Stat(resetFile[ld.name]); !os.IsNotExist(err) {
		t.Fatalf("the reset file is still there: %v", err)
	}
	if err := os.WriteFile(resetFile[ld.name], []byte(m[1]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, body = tokenCall(t, "PUT", client.base+"/v1/acl/bootstrap", "", `{"BootstrapSecret": "6a1f6f8c-7b4f-4b0e-9f57-5c3a7d1e2f10"}`)
	var again struct{ ID, SecretID, AccessorID string }
	if code != 200 || json.Unmarshal([]byte(body), &again) != nil || again.SecretID != "6a1f6f8c-7b4f-4b0e-9f57-5c3a7d1e2f10" || again.ID != again.SecretID || again.AccessorID == tok.AccessorID {
		t.Fatalf("bootstrap after a reset: %d %s", code, body)
	}
	if _, err := os.Stat(resetFile[ld.name]); !os.IsNotExist(err) {
		t.Fatalf("the reset file outlived its use: %v", err)
	}
	code, body = tokenCall(t, "PUT", client.base+"/v1/acl/bootstrap", "", "")
	if m2 := resetIndexRE.FindStringSubmatch(body); code != 403 || m2 == nil || m2[1] == m[1] {
		t.Fatalf("bootstrap after the reset was used: %d %q", code, body)
	}
}

// Ten bootstraps at once through four agents: exactly one wins.
func TestRaftACLBootstrapRace(t *testing.T) {
	servers, client, _ := startACLGroup(t, api.ACLConfig{Enabled: true, DefaultPolicy: "deny"})
	agents := append(servers, client)
	codes := make([]int, 10)
	bodies := make([]string, 10)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], bodies[i] = tokenCall(t, "PUT", agents[i%len(agents)].base+"/v1/acl/bootstrap", "", "")
		}()
	}
	wg.Wait()
	won := 0
	for i, c := range codes {
		switch {
		case c == 200:
			won++
		case c == 403 && resetIndexRE.MatchString(bodies[i]):
		default:
			t.Errorf("bootstrap %d: %d %q", i, c, bodies[i])
		}
	}
	if won != 1 {
		t.Fatalf("%d bootstraps won: %v", won, codes)
	}
	n := 0
	for _, e := range leaderOf(servers).node.State().KVList(registry.AgreedReservedPrefix + "token/") {
		if strings.Contains(string(e.Value), "Bootstrap Token") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d bootstrap tokens stored", n)
	}
}

// With no leader an ACL write waits out the hold timeout, then answers
// Consul's 500 No cluster leader; the configuration's tokens still read.
func TestRaftACLNoLeader(t *testing.T) {
	a := startRaftAgent(t, "s0", true, nil, func(c *api.Config) {
		c.ACL = testACL()
		c.RPCHoldTimeout = 300 * time.Millisecond
	}) // never bootstrapped: no leader
	if code, body := tokenCall(t, "PUT", a.base+"/v1/acl/policy", mgmtTok, `{"Name": "p"}`); code != 500 || !strings.Contains(body, "No cluster leader") {
		t.Fatalf("policy create without a leader: %d %q", code, body)
	}
	if code, body := tokenCall(t, "PUT", a.base+"/v1/acl/bootstrap", "", ""); code != 500 || !strings.Contains(body, "No cluster leader") {
		t.Fatalf("bootstrap without a leader: %d %q", code, body)
	}
	if code, body := tokenCall(t, "GET", a.base+"/v1/acl/tokens", mgmtTok, ""); code != 200 {
		t.Fatalf("token list without a leader: %d %q", code, body)
	}
}

// Without servers the bootstrap works on the gossip store, once per agent
// (a race between agents is not excluded there); with ACLs off it is
// Consul's 401; a configuration with an initial management token counts as
// bootstrapped, so no anonymous caller gets a second management token.
func TestACLBootstrapWithoutServers(t *testing.T) {
	a := startACLAgent(t, api.ACLConfig{Enabled: true, DefaultPolicy: "deny"})
	tok, _, err := a.client(t, "").ACL().Bootstrap()
	if err != nil || tok.SecretID == "" || len(tok.Policies) != 1 || tok.Policies[0].Name != "global-management" {
		t.Fatalf("bootstrap: %+v %v", tok, err)
	}
	if _, _, err := a.client(t, tok.SecretID).ACL().PolicyCreate(&consul.ACLPolicy{Name: "p"}, nil); err != nil {
		t.Fatalf("the bootstrap token does not manage: %v", err)
	}
	if code, body := tokenCall(t, "PUT", a.base+"/v1/acl/bootstrap", "", ""); code != 403 || !resetIndexRE.MatchString(body) {
		t.Fatalf("second bootstrap: %d %q", code, body)
	}

	off := startAgent(t)
	if code, body := tokenCall(t, "PUT", off.base+"/v1/acl/bootstrap", "", ""); code != 401 || !strings.Contains(body, "ACL support disabled") {
		t.Fatalf("bootstrap with ACLs off: %d %q", code, body)
	}

	cfgd := startACLAgent(t, testACL())
	if code, body := tokenCall(t, "PUT", cfgd.base+"/v1/acl/bootstrap", "", ""); code != 403 || !strings.Contains(body, "(reset index: 0)") {
		t.Fatalf("bootstrap with an initial management token configured: %d %q", code, body)
	}
	if code, body := tokenCall(t, "PUT", cfgd.base+"/v1/acl/bootstrap", "", `{"BootstrapSecret": "nope"}`); code != 400 || !strings.Contains(body, "BootstrapSecret") {
		t.Fatalf("bootstrap with a bad secret: %d %q", code, body)
	}
}
