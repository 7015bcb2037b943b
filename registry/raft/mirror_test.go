package raft

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

func newRegistry(t testing.TB, name string) *registry.Registry {
	t.Helper()
	cfg := registry.DefaultConfig()
	cfg.NodeName, cfg.Address = name, "127.0.0.1"
	r, err := registry.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// run starts fn on a goroutine and, at cleanup, cancels it and waits.
func run(t *testing.T, fn func(ctx context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loop: %v", err)
		}
	})
}

func hasKey(r *registry.Registry, key, value string) bool {
	e, ok := r.Snapshot().KV(key)
	return ok && string(e.Value) == value
}

func hasService(r *registry.Registry, name, node string) bool {
	ins := r.Snapshot().ServiceInstances(name)
	return len(ins) == 1 && ins[0].Node.Name == node
}

const extBody = `{"Datacenter":"dc1","Node":"ext-db","Address":"10.9.0.1","Service":{"Service":"db","Port":5432},"Check":{"Name":"db tcp","Status":"passing","ServiceID":"db"}}`

func registerExt(t *testing.T, n *Node, isAgent func(string) bool) {
	t.Helper()
	var req RegisterRequest
	if err := jsonDecode(extBody, &req); err != nil {
		t.Fatal(err)
	}
	if r, err := n.RegisterExternal(req, isAgent); err != nil || !r.OK {
		t.Fatalf("RegisterExternal: %+v %v", r, err)
	}
}

// On a server, RunMirror brings every applied change into the agent's
// registry: a KV write (a route from KV among them) and an external service
// with its check; the agent's own name is refused as an external node.
func TestMirrorServer(t *testing.T) {
	s := startServer(t, Config{ID: "m0", Bind: "127.0.0.1:0"})
	if err := s.n.Bootstrap([]Server{{ID: "m0", Address: s.n.Addr()}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "a leader", func() bool { return s.n.IsLeader() })
	reg := newRegistry(t, "server-1")
	run(t, func(ctx context.Context) error { return RunMirror(ctx, s.n, reg) })

	if r, err := s.n.KV(KVOp{Verb: KVSet, Key: "pier/routes/api", Value: []byte("path: /api/\nservice: api")}); err != nil || !r.OK {
		t.Fatalf("KV: %+v %v", r, err)
	}
	registerExt(t, s.n, reg.IsAgentNode)
	eventually.True(t, 5*time.Second, "the route and the external service in the registry", func() bool {
		return hasKey(reg, "pier/routes/api", "path: /api/\nservice: api") && hasService(reg, "db", "ext-db")
	})
	if ins := reg.Snapshot().ServiceInstances("db"); ins[0].Status() != registry.StatusPassing {
		t.Errorf("db's health: %s", ins[0].Status())
	}

	req := RegisterRequest{Node: "server-1", Address: "10.6.6.6"}
	var fe *registry.FieldError
	if _, err := s.n.RegisterExternal(req, reg.IsAgentNode); !errors.As(err, &fe) || fe.Field != "Node" {
		t.Errorf("registering over the agent's own name: %v", err)
	}
	if _, err := s.n.DeregisterExternal(DeregisterRequest{Node: "server-1"}, reg.IsAgentNode); !errors.As(err, &fe) {
		t.Errorf("deregistering the agent's own name: %v", err)
	}

	if r, err := s.n.DeregisterExternal(DeregisterRequest{Node: "ext-db"}, reg.IsAgentNode); err != nil || !r.OK {
		t.Fatalf("DeregisterExternal: %+v %v", r, err)
	}
	eventually.True(t, 5*time.Second, "the external node leaves the registry", func() bool {
		_, ok := reg.Snapshot().Node("ext-db")
		return !ok
	})
}

// mirrorServer is a server's internal HTTP serving MirrorHandler, counting
// the requests it receives.
type mirrorServer struct {
	srv  *http.Server
	addr string
	hits atomic.Int64
	done chan struct{}
}

func serveMirror(t *testing.T, n *Node) *mirrorServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mirrorServer{addr: ln.Addr().String(), done: make(chan struct{})}
	h := MirrorHandler(n)
	mux := http.NewServeMux()
	mux.Handle(MirrorPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.hits.Add(1)
		h.ServeHTTP(w, r)
	}))
	m.srv = &http.Server{Handler: mux}
	go func() { m.srv.Serve(ln); close(m.done) }()
	t.Cleanup(m.stop)
	return m
}

func (m *mirrorServer) stop() {
	m.srv.Close()
	<-m.done
}

// A client follows the servers' agreed state over HTTP: a KV write and an
// external service on the leader reach its registry; when the server it
// follows dies, it moves to another and keeps up.
func TestMirrorFollowFailover(t *testing.T) {
	var servers []*testServer
	var members []Server
	for i := range 3 {
		s := startServer(t, Config{ID: fmt.Sprintf("f%d", i), Bind: "127.0.0.1:0"})
		servers = append(servers, s)
		members = append(members, Server{ID: s.n.ID(), Address: s.n.Addr(), Voter: true})
	}
	for _, s := range servers {
		if err := s.n.Bootstrap(members); err != nil {
			t.Fatal(err)
		}
	}
	var lead *testServer
	eventually.True(t, 10*time.Second, "a leader", func() bool { lead = leaderOf(servers); return lead != nil })
	var https []*mirrorServer
	var addrs []string
	for _, s := range servers {
		m := serveMirror(t, s.n)
		https, addrs = append(https, m), append(addrs, m.addr)
	}

	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	reg := newRegistry(t, "client-1")
	run(t, func(ctx context.Context) error {
		return FollowMirror(ctx, func() []string { return addrs }, reg, client, nil)
	})

	if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: "app/a", Value: []byte("1")}); err != nil || !r.OK {
		t.Fatalf("KV: %+v %v", r, err)
	}
	registerExt(t, lead.n, nil)
	eventually.True(t, 10*time.Second, "the client sees the key and the external service", func() bool {
		return hasKey(reg, "app/a", "1") && hasService(reg, "db", "ext-db")
	})

	// The server the client follows (the one asked last) dies.
	followed := 0
	for i, m := range https {
		if m.hits.Load() > https[followed].hits.Load() {
			followed = i
		}
	}
	before := make([]int64, len(https))
	for i, m := range https {
		before[i] = m.hits.Load()
	}
	https[followed].stop()
	servers[followed].stop()
	eventually.True(t, 10*time.Second, "a leader among the others", func() bool { lead = leaderOf(servers); return lead != nil })
	eventually.True(t, 10*time.Second, "a write after the failover", func() bool {
		r, err := lead.n.KV(KVOp{Verb: KVSet, Key: "app/b", Value: []byte("2")})
		return err == nil && r.OK
	})
	eventually.True(t, 15*time.Second, "the client sees the write through another server", func() bool {
		return hasKey(reg, "app/b", "2")
	})
	others := int64(0)
	for i, m := range https {
		if i != followed {
			others += m.hits.Load() - before[i]
		}
	}
	if others == 0 {
		t.Error("no other server was asked after the followed one died")
	}
	if !hasKey(reg, "app/a", "1") || !hasService(reg, "db", "ext-db") {
		t.Error("the client lost what it had")
	}

	// Every server's HTTP gone: the client keeps the last state (and its
	// loop, backing off, still stops at cleanup).
	for _, m := range https {
		m.stop()
	}
	time.Sleep(300 * time.Millisecond) // a few rounds of failed polls; any length passes
	if !hasKey(reg, "app/b", "2") || !hasService(reg, "db", "ext-db") {
		t.Error("the client dropped its state when no server answered")
	}
}

// The handler answers at once without an index (an empty state too),
// blocks past one until a change, answers 204 when the wait runs out
// first, and refuses bad parameters.
func TestMirrorHandlerBlocking(t *testing.T) {
	s := startServer(t, Config{ID: "h0", Bind: "127.0.0.1:0"})
	s.n.Bootstrap([]Server{{ID: "h0", Address: s.n.Addr()}})
	eventually.True(t, 10*time.Second, "a leader", func() bool { return s.n.IsLeader() })
	m := serveMirror(t, s.n)
	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)

	empty, changed, err := pollMirror(context.Background(), client, m.addr, 0)
	if err != nil || !changed || empty.Index != 1 {
		t.Fatalf("the empty state: %+v %v %v", empty, changed, err)
	}
	s.n.KV(KVOp{Verb: KVSet, Key: "k", Value: []byte("v")})
	a, _, err := pollMirror(context.Background(), client, m.addr, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := a.KV.KV("k"); !ok || string(e.Value) != "v" || a.Index != a.KVIndex {
		t.Fatalf("first answer: %+v", a)
	}
	// A short wait with nothing new answers 204 and the index.
	resp, err := client.Get(fmt.Sprintf("http://%s%s?index=%d&wait=50ms", m.addr, MirrorPath, a.Index))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("X-Pier-Index") != fmt.Sprint(a.Index) {
		t.Errorf("after the wait: %s, index %s, want 204 and %d", resp.Status, resp.Header.Get("X-Pier-Index"), a.Index)
	}
	// A blocked poll wakes on a write.
	got := make(chan registry.Agreed, 1)
	go func() {
		c, _, err := pollMirror(context.Background(), client, m.addr, a.Index)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	s.n.KV(KVOp{Verb: KVSet, Key: "k2", Value: []byte("v2")})
	c := <-got
	if _, ok := c.KV.KV("k2"); !ok || c.Index <= a.Index {
		t.Errorf("the woken answer: index %d", c.Index)
	}
	// A client ahead of the leader (the servers' history was reset) gets
	// the leader's state at once.
	if r, changed, err := pollMirror(context.Background(), client, m.addr, c.Index+1000); err != nil || !changed || r.Index != c.Index {
		t.Errorf("a client ahead of the leader: %+v %v %v", r, changed, err)
	}
	for _, q := range []string{"index=x", "wait=soon"} {
		resp, err := client.Get(fmt.Sprintf("http://%s%s?%s", m.addr, MirrorPath, q))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("?%s: %s", q, resp.Status)
		}
	}
}

// BenchmarkMirrorAnswer measures one whole-state answer of 10,000 keys
// (64-byte values) and 100 external nodes: the server's encoding, the
// client's decoding and its merge into a registry.
func BenchmarkMirrorAnswer(b *testing.B) {
	a := &applier{f: NewFSM(nil)}
	for i := range 10000 {
		cmd, _ := encode(command{Type: cmdKV, Ops: []KVOp{{Verb: KVSet, Key: fmt.Sprintf("app/config/%05d", i), Value: bytes.Repeat([]byte{'x'}, 64)}}})
		a.idx++
		a.f.Apply(rawLog(a.idx, cmd))
	}
	for i := range 100 {
		req := RegisterRequest{Node: fmt.Sprintf("ext-%03d", i), Address: "10.9.0.1", Service: &RegisterService{Service: "db", Port: 5432},
			Checks: []*RegisterCheck{{Name: "tcp", Status: "passing", ServiceID: "db"}}}
		cmd, _ := encode(command{Type: cmdCatalogRegister, Register: &req})
		a.idx++
		a.f.Apply(rawLog(a.idx, cmd))
	}
	st := a.f.State()
	h := &mirrorHandler{}
	body, err := h.encode(st)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			h := &mirrorHandler{}
			if _, err := h.encode(st); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(body)), "bytes/answer")
	})
	b.Run("decode+merge", func(b *testing.B) {
		reg := newRegistry(b, "bench")
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			ag, err := decodeMirror(bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			ag.Index += uint64(i) // each answer newer than the last
			ag.KVIndex += uint64(i)
			reg.SetAgreed(ag)
		}
	})
}

func jsonDecode(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func rawLog(idx uint64, data []byte) *hraft.Log {
	return &hraft.Log{Index: idx, Type: hraft.LogCommand, Data: data}
}

// BenchmarkMirrorApply measures what a server's mirror adds to one KV
// write into a store of 10,000 keys: the registry's merge of the new State
// (the store is shared, not copied).
func BenchmarkMirrorApply(b *testing.B) {
	f := NewFSM(nil)
	idx := uint64(0)
	set := func(key string) {
		cmd, _ := encode(command{Type: cmdKV, Ops: []KVOp{{Verb: KVSet, Key: key, Value: []byte(fmt.Sprint(idx))}}})
		idx++
		f.Apply(rawLog(idx, cmd))
	}
	for i := range 10000 {
		set(fmt.Sprintf("app/config/%05d", i))
	}
	reg := newRegistry(b, "bench")
	var nodes nodesCache
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		set("app/hot")
		s := f.State()
		reg.SetAgreed(registry.Agreed{Index: s.MirrorIndex(), KVIndex: s.kvIndex, KV: s, CatalogIndex: s.catalogIndex, Nodes: nodes.of(s)})
	}
}
