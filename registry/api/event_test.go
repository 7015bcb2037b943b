package api_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/gossip"
)

// gossipCluster is the API's view of a real gossip layer, as the agent
// wires it (cmd/pier's cluster).
type gossipCluster struct{ *gossip.Gossip }

func (c gossipCluster) FireEvent(e api.UserEvent) (api.UserEvent, error) {
	out, err := c.Gossip.FireEvent(gossip.UserEvent(e))
	return api.UserEvent(out), err
}

func (c gossipCluster) Events() ([]api.UserEvent, <-chan struct{}) {
	evs, changed := c.Gossip.Events()
	out := make([]api.UserEvent, len(evs))
	for i, e := range evs {
		out[i] = api.UserEvent(e)
	}
	return out, changed
}

// startGossipAgent is an agent whose API runs on a real gossip layer on
// loopback, joined to join (none: the first of a cluster).
func startGossipAgent(t *testing.T, name string, join []string, adjust func(*api.Config)) (*agent, *gossip.Gossip) {
	t.Helper()
	var g *gossip.Gossip
	a := startAgentCfg(t, func(rc *registry.Config) { rc.NodeName = name }, func(acfg *api.Config) {
		gc := gossip.DefaultConfig()
		gc.Registry = acfg.Registry
		gc.BindAddr, gc.BindPort = "127.0.0.1", 0
		gc.StartJoin = join
		gc.LeaveTimeout = 2 * time.Second
		gc.Memberlist = func(c *memberlist.Config) {
			c.ProbeInterval, c.ProbeTimeout, c.GossipInterval = 500*time.Millisecond, 300*time.Millisecond, 50*time.Millisecond
			c.PushPullInterval, c.TCPTimeout = 2*time.Second, 2*time.Second
		}
		var err error
		if g, err = gossip.New(gc); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		acfg.Cluster = gossipCluster{g}
		if adjust != nil {
			adjust(acfg)
		}
	})
	return a, g
}

// TestEventFireAndWatch: consul/api's Event().Fire on one agent of three,
// and Event().List on another, blocking on its index as consul watch
// -type=event does.
func TestEventFireAndWatch(t *testing.T) {
	a0, g0 := startGossipAgent(t, "n0", nil, nil)
	a1, _ := startGossipAgent(t, "n1", []string{g0.Addr()}, nil)
	a2, _ := startGossipAgent(t, "n2", []string{g0.Addr()}, nil)
	for _, a := range []*agent{a0, a1, a2} {
		eventually.True(t, 60*time.Second, "three members", func() bool {
			ms, err := a.client.Agent().Members(false)
			return err == nil && len(ms) == 3
		})
	}
	if err := a1.client.Agent().ServiceRegister(&consul.AgentServiceRegistration{Name: "web", Port: 80, Tags: []string{"blue"}}); err != nil {
		t.Fatal(err)
	}

	evs, meta, err := a2.client.Event().List("deploy", nil)
	if err != nil || len(evs) != 0 || meta.LastIndex != 1 {
		t.Fatalf("empty list: %v, index %d, %v", evs, meta.LastIndex, err)
	}
	type result struct {
		evs  []*consul.UserEvent
		meta *consul.QueryMeta
		err  error
	}
	got := make(chan result, 1)
	go func() {
		evs, meta, err := a2.client.Event().List("deploy", &consul.QueryOptions{WaitIndex: 1, WaitTime: time.Minute})
		got <- result{evs, meta, err}
	}()

	id, _, err := a0.client.Event().Fire(&consul.UserEvent{Name: "deploy", Payload: []byte("v2")}, nil)
	if err != nil {
		t.Fatalf("Fire: %v", err)
	}
	r := <-got
	if r.err != nil || len(r.evs) != 1 {
		t.Fatalf("blocking List: %v, %v", r.evs, r.err)
	}
	e := r.evs[0]
	if e.ID != id || e.Name != "deploy" || string(e.Payload) != "v2" || e.Version != 1 {
		t.Errorf("listed %+v, fired %s", *e, id)
	}
	if want := a2.client.Event().IDToIndex(id); r.meta.LastIndex != want {
		t.Errorf("index %d, want IDToIndex %d", r.meta.LastIndex, want)
	}

	// A blocking query on the current index waits for the next event of
	// that name; another name does not end it.
	go func() {
		evs, meta, err := a2.client.Event().List("deploy", &consul.QueryOptions{WaitIndex: r.meta.LastIndex, WaitTime: time.Minute})
		got <- result{evs, meta, err}
	}()
	if _, _, err := a1.client.Event().Fire(&consul.UserEvent{Name: "other"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 30*time.Second, "n2 lists the other event", func() bool {
		evs, _, err := a2.client.Event().List("other", nil)
		return err == nil && len(evs) == 1
	})
	select {
	case r := <-got:
		t.Fatalf("the blocking query ended on another name's event: %v", r.evs)
	default:
	}
	id2, _, err := a1.client.Event().Fire(&consul.UserEvent{Name: "deploy"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r = <-got
	if r.err != nil || len(r.evs) != 2 || r.evs[1].ID != id2 || r.meta.LastIndex != a2.client.Event().IDToIndex(id2) {
		t.Fatalf("second blocking List: %v, %v", r.evs, r.err)
	}

	// Filters are applied where the event arrives: only n1 runs web.
	web, _, err := a0.client.Event().Fire(&consul.UserEvent{Name: "restart", ServiceFilter: "^web$", TagFilter: "^blue$"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	node2, _, err := a0.client.Event().Fire(&consul.UserEvent{Name: "restart", NodeFilter: "^n2$"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(a *agent) []string {
		evs, _, err := a.client.Event().List("restart", nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			out = append(out, e.ID)
		}
		return out
	}
	eventually.True(t, 30*time.Second, "n1 keeps the web event", func() bool { return slices.Equal(ids(a1), []string{web}) })
	eventually.True(t, 30*time.Second, "n2 keeps its own event", func() bool { return slices.Equal(ids(a2), []string{node2}) })
	if got := ids(a0); len(got) != 0 {
		t.Errorf("n0 kept %v", got)
	}
	// An event fired after both reached n1 and n0, so they have heard
	// the filtered ones too (a broadcast queue is not ordered, hence the
	// wait on n0's list instead of a single look).
	last, _, _ := a0.client.Event().Fire(&consul.UserEvent{Name: "restart", NodeFilter: "^n[01]$"}, nil)
	eventually.True(t, 30*time.Second, "n1 keeps the last event", func() bool { return slices.Equal(ids(a1), []string{web, last}) })
	if got := ids(a0); !slices.Equal(got, []string{last}) {
		t.Errorf("n0 kept %v", got)
	}
}

// TestEventFireRefused: Consul's answers to what it refuses.
func TestEventFireRefused(t *testing.T) {
	a, _ := startGossipAgent(t, "n0", nil, nil)
	for _, c := range []struct {
		path, body string
		code       int
		says       string
	}{
		{"/v1/event/fire/", "", 400, "Missing name"},
		{"/v1/event/fire/x", strings.Repeat("a", 301), 413, "Event payload too large"},
		{"/v1/event/fire/x?tag=a", "", 400, "tag filter without service filter"},
		{"/v1/event/fire/x?node=(", "", 400, "Invalid node filter"},
		{"/v1/event/fire/x?service=" + strings.Repeat("s", 300), strings.Repeat("a", 200), 400, "exceeds the limit of 512 bytes"},
		{"/v1/event/fire/x?dc=dc9", "", 500, `No path to datacenter "dc9"`},
	} {
		req, _ := http.NewRequest("PUT", a.base+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp)
		if resp.StatusCode != c.code || !strings.Contains(body, c.says) {
			t.Errorf("PUT %s: %d %q, want %d %q", c.path, resp.StatusCode, body, c.code, c.says)
		}
	}
	if evs, _, err := a.client.Event().List("", nil); err != nil || len(evs) != 0 {
		t.Errorf("refused events were kept: %v, %v", evs, err)
	}
}

// TestEventACL: event:write fires, event:read lists, by name.
func TestEventACL(t *testing.T) {
	const mgmt, dep, anon = "mgmt-secret", "deploy-secret", ""
	rules, err := acl.ParseRules(`event_prefix "deploy" { policy = "write" }
event "secret" { policy = "deny" }`)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := startGossipAgent(t, "n0", nil, func(c *api.Config) {
		c.ACL = api.ACLConfig{Enabled: true, DefaultPolicy: "deny", InitialManagement: mgmt,
			Tokens: []acl.Token{{Secret: dep, Description: "deployer", Rules: rules}}}
	})
	client := func(tok string) *consul.Event {
		c, err := consul.NewClient(&consul.Config{Address: a.addr, Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		return c.Event()
	}
	if _, _, err := client(dep).Fire(&consul.UserEvent{Name: "secret"}, nil); !isDenied(err) {
		t.Errorf("deployer fires secret: %v", err)
	}
	if _, _, err := client(anon).Fire(&consul.UserEvent{Name: "deploy-web"}, nil); !isDenied(err) {
		t.Errorf("anonymous fires: %v", err)
	}
	for _, n := range []string{"deploy-web", "secret", "other"} {
		if _, _, err := client(mgmt).Fire(&consul.UserEvent{Name: n}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := client(dep).Fire(&consul.UserEvent{Name: "deploy-db"}, nil); err != nil {
		t.Fatalf("deployer fires deploy-db: %v", err)
	}
	names := func(tok string) []string {
		evs, _, err := client(tok).List("", nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			out = append(out, e.Name)
		}
		return out
	}
	if got := names(dep); !slices.Equal(got, []string{"deploy-web", "deploy-db"}) {
		t.Errorf("deployer lists %v", got)
	}
	if got := names(anon); len(got) != 0 {
		t.Errorf("anonymous lists %v", got)
	}
	if got := names(mgmt); len(got) != 4 {
		t.Errorf("management lists %v", got)
	}
}

// TestEventList256: an agent lists the last 256 events, oldest first.
func TestEventList256(t *testing.T) {
	a, _ := startGossipAgent(t, "n0", nil, nil)
	var ids []string
	for i := range 260 {
		id, _, err := a.client.Event().Fire(&consul.UserEvent{Name: fmt.Sprint("e", i)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	evs, _, err := a.client.Event().List("", nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.ID)
	}
	if !slices.Equal(got, ids[4:]) {
		t.Errorf("listed %d events, want the last 256 in order", len(got))
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
