package api_test

// The Consul API on the Raft state (Config.Consensus), driven with the
// official consul/api client: sessions, locks, semaphores, txn, CAS,
// forwarding across a group of three servers and a client, bad input.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

func httpDo(t *testing.T, method, url string, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// A session's life through consul/api: create with Consul's defaults,
// info, list, node, renew, a lock taken and released, destroy.
func TestRaftSessionLifecycle(t *testing.T) {
	a := startSingleServer(t)
	s := a.client.Session()
	id, _, err := s.Create(&consul.SessionEntry{Name: "web-lock", TTL: "10s"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, _, err := s.Info(id, nil)
	if err != nil || info == nil {
		t.Fatalf("info: %+v %v", info, err)
	}
	if info.Node != "s0" || info.Behavior != "release" || info.LockDelay != 15*time.Second || info.TTL != "10s" ||
		len(info.NodeChecks) != 1 || info.NodeChecks[0] != "serfHealth" || info.Name != "web-lock" {
		t.Fatalf("info = %+v", info)
	}
	if list, _, err := s.List(nil); err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("list: %+v %v", list, err)
	}
	if list, _, err := s.Node("s0", nil); err != nil || len(list) != 1 {
		t.Fatalf("node: %+v %v", list, err)
	}
	if e, _, err := s.Renew(id, nil); err != nil || e == nil || e.ID != id {
		t.Fatalf("renew: %+v %v", e, err)
	}
	if e, _, err := s.Renew("00000000-0000-0000-0000-000000000000", nil); err != nil || e != nil {
		t.Fatalf("renew of an unknown session: %+v %v (want nil, nil: a 404)", e, err)
	}

	kv := a.client.KV()
	ok, _, err := kv.Acquire(&consul.KVPair{Key: "svc/leader", Value: []byte("me"), Session: id}, nil)
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	p, _, err := kv.Get("svc/leader", nil)
	if err != nil || p.Session != id || p.LockIndex != 1 || string(p.Value) != "me" {
		t.Fatalf("held key = %+v %v", p, err)
	}
	other, _, err := s.Create(&consul.SessionEntry{LockDelay: time.Nanosecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := kv.Acquire(&consul.KVPair{Key: "svc/leader", Session: other}, nil); err != nil || ok {
		t.Fatalf("a second session acquired a held lock: %v %v", ok, err)
	}
	if ok, _, err := kv.Release(&consul.KVPair{Key: "svc/leader", Session: id}, nil); err != nil || !ok {
		t.Fatalf("release: %v %v", ok, err)
	}
	if p, _, _ := kv.Get("svc/leader", nil); p.Session != "" || p.LockIndex != 1 {
		t.Fatalf("released key = %+v", p)
	}
	if _, err := s.Destroy(id, nil); err != nil {
		t.Fatal(err)
	}
	if info, _, err := s.Info(id, nil); err != nil || info != nil {
		t.Fatalf("info after destroy: %+v %v", info, err)
	}
	if _, err := s.Destroy(other, nil); err != nil {
		t.Fatal(err)
	}
}

// consul/api's LockKey: the second locker waits until the first unlocks.
func TestRaftLockKey(t *testing.T) {
	a := startSingleServer(t)
	l1, err := a.client.LockKey("app/lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l1.Lock(nil); err != nil {
		t.Fatal(err)
	}
	l2, err := a.client.LockKey("app/lock")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		_, err := l2.Lock(nil)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("the second locker got the lock while the first held it: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := l1.Unlock(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the second locker did not get the lock after the first unlocked")
	}
	if err := l2.Unlock(); err != nil {
		t.Fatal(err)
	}
}

// consul/api's SemaphorePrefix with a limit of two: the third holder waits
// for a slot.
func TestRaftSemaphore(t *testing.T) {
	a := startSingleServer(t)
	var sems []*consul.Semaphore
	for range 3 {
		s, err := a.client.SemaphorePrefix("sem/", 2)
		if err != nil {
			t.Fatal(err)
		}
		sems = append(sems, s)
	}
	for _, s := range sems[:2] {
		if _, err := s.Acquire(nil); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan error, 1)
	go func() {
		_, err := sems[2].Acquire(nil)
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a third holder got a slot of two: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := sems[0].Release(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the third holder did not get the freed slot")
	}
	for _, s := range sems[1:] {
		if err := s.Release(); err != nil {
			t.Fatal(err)
		}
	}
}

// Txn: all operations apply, or none with a 409 naming the failed one.
func TestRaftTxn(t *testing.T) {
	a := startSingleServer(t)
	txn := a.client.Txn()
	ok, resp, _, err := txn.Txn(consul.TxnOps{
		{KV: &consul.KVTxnOp{Verb: consul.KVSet, Key: "t/a", Value: []byte("1")}},
		{KV: &consul.KVTxnOp{Verb: consul.KVSet, Key: "t/b", Value: []byte("2")}},
		{KV: &consul.KVTxnOp{Verb: consul.KVGet, Key: "t/a"}},
	}, nil)
	if err != nil || !ok || len(resp.Results) != 3 || string(resp.Results[2].KV.Value) != "1" || resp.Results[0].KV.Value != nil {
		t.Fatalf("txn: ok=%v %+v %v", ok, resp, err)
	}
	idx := resp.Results[1].KV.ModifyIndex
	ok, resp, _, err = txn.Txn(consul.TxnOps{
		{KV: &consul.KVTxnOp{Verb: consul.KVSet, Key: "t/b", Value: []byte("3")}},
		{KV: &consul.KVTxnOp{Verb: consul.KVCAS, Key: "t/a", Value: []byte("x"), Index: idx + 100}},
	}, nil)
	if err != nil || ok || len(resp.Errors) != 1 || resp.Errors[0].OpIndex != 1 || !strings.Contains(resp.Errors[0].What, "t/a") {
		t.Fatalf("failed txn: ok=%v %+v %v", ok, resp, err)
	}
	if p, _, _ := a.client.KV().Get("t/b", nil); string(p.Value) != "2" {
		t.Fatalf("a rolled back txn changed t/b to %q", p.Value)
	}
	// Reads alone are served as a read.
	ok, resp, _, err = txn.Txn(consul.TxnOps{{KV: &consul.KVTxnOp{Verb: consul.KVGetTree, Key: "t/"}}}, &consul.QueryOptions{AllowStale: true})
	if err != nil || !ok || len(resp.Results) != 2 {
		t.Fatalf("read txn: ok=%v %+v %v", ok, resp, err)
	}
}

// Twenty writers CAS the same index: exactly one wins. (Each writes a
// value of its own: a CAS that writes the value already there succeeds
// and leaves the index as it is, as in Consul, so another could win too.)
func TestRaftCASRace(t *testing.T) {
	a := startSingleServer(t)
	kv := a.client.KV()
	if _, err := kv.Put(&consul.KVPair{Key: "race", Value: []byte("initial")}, nil); err != nil {
		t.Fatal(err)
	}
	p, _, err := kv.Get("race", nil)
	if err != nil {
		t.Fatal(err)
	}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, _, err := kv.CAS(&consul.KVPair{Key: "race", Value: []byte(fmt.Sprint("writer ", i)), ModifyIndex: p.ModifyIndex}, nil)
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d CAS writers won, want 1", wins.Load())
	}
}

func TestRaftBadInput(t *testing.T) {
	a := startSingleServer(t)
	for _, c := range []struct {
		name, method, path, body string
		code                     int
		says                     string
	}{
		{"TTL below 10s", "PUT", "/v1/session/create", `{"TTL":"1s"}`, 400, "Session TTL"},
		{"bad behavior", "PUT", "/v1/session/create", `{"Behavior":"keep"}`, 400, "Behavior"},
		{"bad lock delay", "PUT", "/v1/session/create", `{"LockDelay":"soon"}`, 400, "LockDelay"},
		{"unknown node", "PUT", "/v1/session/create", `{"Node":"nowhere"}`, 500, "Missing node registration"},
		{"unknown check", "PUT", "/v1/session/create", `{"NodeChecks":["nope"]}`, 500, "Missing check 'nope' registration"},
		{"65 ops", "PUT", "/v1/txn", txnOfN(65), 413, "too many operations"},
		{"malformed op", "PUT", "/v1/txn", `[{"KV":{"Verb":"set","Key":"a"}},{"KV":{"Verb":"set","Key":"b"}},{"KV":{"Verb":"frobnicate","Key":"c"}}]`, 400, "op 2"},
		{"node op", "PUT", "/v1/txn", `[{"Node":{"Verb":"get"}}]`, 400, "op 0: Node operations are not supported"},
		{"not a list", "PUT", "/v1/txn", `{"KV":{}}`, 400, "Failed to parse body"},
		{"acquire unknown session", "PUT", "/v1/kv/k?acquire=ghost-session", "v", 500, "ghost-session"},
		{"cas and acquire", "PUT", "/v1/kv/k?cas=1&acquire=x", "v", 400, "Conflicting flags"},
		{"reserved key", "PUT", "/v1/kv/_pier/x", "v", 400, "reserved"},
		{"renew unknown", "PUT", "/v1/session/renew/nope", "", 404, "Session id 'nope' not found"},
		{"stale and consistent", "GET", "/v1/kv/k?stale&consistent", "", 400, "conflicting"},
	} {
		code, body, _ := httpDo(t, c.method, a.base+c.path, c.body)
		if code != c.code || !strings.Contains(body, c.says) {
			t.Errorf("%s: %d %q, want %d with %q", c.name, code, body, c.code, c.says)
		}
	}
	if list, _, _ := a.client.Session().List(nil); len(list) != 0 {
		t.Errorf("refused creates left sessions: %+v", list)
	}
}

func txnOfN(n int) string {
	var b strings.Builder
	b.WriteString("[")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"KV":{"Verb":"set","Key":"k%d"}}`, i)
	}
	b.WriteString("]")
	return b.String()
}

// Three servers and a client: writes through the client and through a
// follower land on the leader, a stale read is a follower's own, the
// leader headers are honest, and without a quorum a write answers 500 No
// cluster leader.
func TestRaftGroupForwarding(t *testing.T) {
	servers, client := startGroup(t)
	lead := leaderOf(servers)
	follower := followerOf(servers, lead)
	if _, err := client.client.KV().Put(&consul.KVPair{Key: "via/client", Value: []byte("c")}, nil); err != nil {
		t.Fatalf("write through the client: %v", err)
	}
	if _, err := follower.client.KV().Put(&consul.KVPair{Key: "via/follower", Value: []byte("f")}, nil); err != nil {
		t.Fatalf("write through a follower: %v", err)
	}
	for _, k := range []string{"via/client", "via/follower"} {
		if _, ok := lead.node.State().KV(k); !ok {
			t.Errorf("%s is not in the leader's state", k)
		}
	}
	// A default read through the client is the leader's.
	p, meta, err := client.client.KV().Get("via/follower", nil)
	if err != nil || p == nil || string(p.Value) != "f" || !meta.KnownLeader {
		t.Fatalf("read through the client: %+v %+v %v", p, meta, err)
	}
	// A consistent read through a follower is the leader's, confirmed.
	if p, _, err := follower.client.KV().Get("via/client", &consul.QueryOptions{RequireConsistent: true}); err != nil || p == nil {
		t.Fatalf("consistent read through a follower: %+v %v", p, err)
	}
	if _, _, h := httpDo(t, "GET", client.base+"/v1/kv/via/client?consistent", ""); h.Get("X-Consul-Effective-Consistency") != "consistent" {
		t.Fatalf("consistent read headers: %v", h)
	}
	// A stale read on a follower answers from its own state, once it has
	// the entry.
	eventually.True(t, 10*time.Second, "the follower has via/client", func() bool {
		_, ok := follower.node.State().KV("via/client")
		return ok
	})
	p, meta, err = follower.client.KV().Get("via/client", &consul.QueryOptions{AllowStale: true})
	if err != nil || p == nil || !meta.KnownLeader {
		t.Fatalf("stale read on a follower: %+v %+v %v", p, meta, err)
	}
	if _, _, h := httpDo(t, "GET", follower.base+"/v1/kv/via/client?stale", ""); h.Get("X-Consul-KnownLeader") != "true" || h.Get("X-Consul-Index") == "" ||
		h.Get("X-Consul-LastContact") == "" || h.Get("X-Consul-Effective-Consistency") != "stale" {
		t.Fatalf("stale read headers: %v", h)
	}
	// A session made through the client is the client's node's.
	id, _, err := client.client.Session().Create(&consul.SessionEntry{TTL: "10s"}, nil)
	if err != nil {
		t.Fatalf("session through the client: %v", err)
	}
	if e, _, err := follower.client.Session().Info(id, nil); err != nil || e == nil || e.Node != "c0" {
		t.Fatalf("session info through a follower: %+v %v", e, err)
	}
	if got, err := client.client.Status().Leader(); err != nil || got != lead.port {
		t.Fatalf("status/leader through the client = %q, %v; want %q", got, err, lead.port)
	}
	if peers, err := follower.client.Status().Peers(); err != nil || len(peers) != 3 {
		t.Fatalf("status/peers = %v, %v", peers, err)
	}
	cfg, err := client.client.Operator().RaftGetConfiguration(nil)
	if err != nil || len(cfg.Servers) != 3 {
		t.Fatalf("raft configuration: %+v %v", cfg, err)
	}
	leaders := 0
	for _, s := range cfg.Servers {
		if s.Leader {
			leaders++
			if s.Address != lead.port || s.Node != lead.name {
				t.Errorf("leader entry %+v, want %s at %s", s, lead.name, lead.port)
			}
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders in %+v", leaders, cfg.Servers)
	}

	// The leader goes: a write through a follower waits for the next one
	// (the follower may first try the old leader, which no longer answers).
	lead.stop()
	if _, err := follower.client.KV().Put(&consul.KVPair{Key: "after/leader", Value: []byte("x")}, nil); err != nil {
		t.Fatalf("a write through a follower while the leader changes: %v", err)
	}
	if _, err := client.client.KV().Put(&consul.KVPair{Key: "after/leader2", Value: []byte("x")}, nil); err != nil {
		t.Fatalf("a write through the client after the leader changed: %v", err)
	}

	// Two servers down: the last one cannot elect a leader.
	var last *raftAgent
	down := 0
	for _, s := range servers {
		if down < 2 && s != follower {
			s.stop()
			down++
		} else if s != follower {
			last = s
		}
	}
	if last == nil {
		last = follower
	} else {
		follower.stop()
	}
	eventually.True(t, 20*time.Second, "a write answers 500 No cluster leader", func() bool {
		code, body, _ := httpDo(t, "PUT", last.base+"/v1/kv/after", "x")
		return code == 500 && strings.Contains(body, "No cluster leader")
	})
	if _, _, h := httpDo(t, "GET", last.base+"/v1/kv/via/client?stale", ""); h.Get("X-Consul-KnownLeader") != "false" {
		t.Errorf("X-Consul-KnownLeader = %q with no leader", h.Get("X-Consul-KnownLeader"))
	}
}

// Health invalidates sessions: a critical serfHealth at once, a node gone
// from the catalog too, releasing their locks.
func TestRaftSessionHealth(t *testing.T) {
	a := startSingleServer(t)
	a.reg.SetMemberStatus("n1", "127.0.0.1", registry.MemberAlive)
	a.reg.SetMemberStatus("n2", "127.0.0.1", registry.MemberAlive)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.RunSessionHealthWithGrace(ctx, a.node, a.reg, 0) }()
	defer func() {
		cancel()
		<-done
	}()
	s := a.client.Session()
	s1, _, err := s.Create(&consul.SessionEntry{Node: "n1", LockDelay: time.Nanosecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, _, err := s.Create(&consul.SessionEntry{Node: "n2", Behavior: "delete"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kv := a.client.KV()
	for key, id := range map[string]string{"h/1": s1, "h/2": s2} {
		if ok, _, err := kv.Acquire(&consul.KVPair{Key: key, Session: id}, nil); err != nil || !ok {
			t.Fatalf("acquire %s: %v %v", key, ok, err)
		}
	}
	a.reg.SetMemberStatus("n1", "127.0.0.1", registry.MemberFailed)
	eventually.True(t, 10*time.Second, "n1's session invalidated", func() bool {
		e, _, _ := s.Info(s1, nil)
		return e == nil
	})
	if p, _, _ := kv.Get("h/1", nil); p == nil || p.Session != "" {
		t.Fatalf("h/1 after its session died = %+v, want released", p)
	}
	if e, _, _ := s.Info(s2, nil); e == nil {
		t.Fatal("n2's healthy session was invalidated")
	}
	a.reg.SetMemberStatus("n2", "", registry.MemberLeft)
	eventually.True(t, 10*time.Second, "n2's session invalidated", func() bool {
		e, _, _ := s.Info(s2, nil)
		return e == nil
	})
	if p, _, _ := kv.Get("h/2", nil); p != nil {
		t.Fatalf("h/2 of a delete session = %+v, want deleted", p)
	}
	// A failed node's session cannot be made.
	if _, _, err := s.Create(&consul.SessionEntry{Node: "n1"}, nil); err == nil || !strings.Contains(err.Error(), "serfHealth") {
		t.Fatalf("session on a failed node: %v", err)
	}
}

// A snapshot saved through consul/api restores the state it held.
func TestRaftSnapshot(t *testing.T) {
	a := startSingleServer(t)
	kv := a.client.KV()
	if _, err := kv.Put(&consul.KVPair{Key: "snap/a", Value: []byte("before")}, nil); err != nil {
		t.Fatal(err)
	}
	rc, _, err := a.client.Snapshot().Save(nil)
	if err != nil {
		t.Fatal(err)
	}
	archive, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || len(archive) == 0 {
		t.Fatalf("save: %d bytes, %v", len(archive), err)
	}
	if _, err := kv.Put(&consul.KVPair{Key: "snap/a", Value: []byte("after")}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.client.Snapshot().Restore(nil, bytes.NewReader(archive)); err != nil {
		t.Fatal(err)
	}
	if p, _, err := kv.Get("snap/a", nil); err != nil || p == nil || string(p.Value) != "before" {
		t.Fatalf("after restore: %+v %v", p, err)
	}
	if code, body, _ := httpDo(t, "PUT", a.base+"/v1/snapshot", "not an archive"); code != 400 {
		t.Fatalf("restore of garbage: %d %q", code, body)
	}
}

// Without Consensus the Raft-only endpoints keep answering 404.
func TestNoConsensusKeepsMissing(t *testing.T) {
	a := startAgent(t)
	for _, p := range []string{"/v1/session/list", "/v1/operator/raft/configuration"} {
		if code, body, _ := httpDo(t, "GET", a.base+p, ""); code != 404 || !strings.Contains(body, "does not serve") {
			t.Errorf("GET %s: %d %q", p, code, body)
		}
	}
}

// A blocking KV read through a client waits at the leader (two forwards)
// until a write through a follower moves the index.
func TestRaftBlockingThroughClient(t *testing.T) {
	servers, client := startGroup(t)
	lead := leaderOf(servers)
	follower := followerOf(servers, lead)
	kv := client.client.KV()
	if _, err := kv.Put(&consul.KVPair{Key: "watch/me", Value: []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	_, meta, err := kv.Get("watch/me", nil)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		p   *consul.KVPair
		err error
	}
	got := make(chan answer, 1)
	go func() {
		p, _, err := kv.Get("watch/me", &consul.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second})
		got <- answer{p, err}
	}()
	select {
	case a := <-got:
		t.Fatalf("a blocking read returned before any write: %+v %v", a.p, a.err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := follower.client.KV().Put(&consul.KVPair{Key: "watch/me", Value: []byte("2")}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-got:
		if a.err != nil || a.p == nil || string(a.p.Value) != "2" {
			t.Fatalf("blocking read woke with %+v %v", a.p, a.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the blocking read did not wake on the write")
	}
}

// ACLs on the Raft endpoints, with the token forwarded from a client: key
// rules on KV and on each txn operation, session rules on sessions.
func TestRaftACL(t *testing.T) {
	aclOn := func(c *api.Config) { c.ACL = testACL() }
	srv := startRaftAgent(t, "s0", true, nil, aclOn)
	if err := srv.node.Bootstrap([]raft.Server{{ID: "s0", Address: srv.port, Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "s0 leads", srv.node.IsLeader)
	srv.reg.SetMemberStatus("c0", "127.0.0.1", registry.MemberAlive)
	cl := startRaftAgent(t, "c0", false, func() []string { return []string{srv.port} }, aclOn)
	put := func(tok, key string) int {
		req, _ := http.NewRequest("PUT", cl.base+"/v1/kv/"+key, strings.NewReader("v"))
		req.Header.Set("X-Consul-Token", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := put(webTok, "app/x"); code != 200 {
		t.Fatalf("web token on app/x: %d", code)
	}
	if code := put(webTok, "other"); code != 403 {
		t.Fatalf("web token on other: %d", code)
	}
	req, _ := http.NewRequest("PUT", cl.base+"/v1/txn", strings.NewReader(`[{"KV":{"Verb":"set","Key":"app/y"}},{"KV":{"Verb":"set","Key":"other"}}]`))
	req.Header.Set("X-Consul-Token", webTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 409 || !strings.Contains(string(b), `"OpIndex":1`) || !strings.Contains(string(b), "Permission denied") {
		t.Fatalf("txn with a denied op: %d %s", resp.StatusCode, b)
	}
	if _, ok := srv.node.State().KV("app/y"); ok {
		t.Fatal("a txn with a denied op applied the allowed one")
	}
	web, _ := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(cl.base, "http://"), Token: webTok})
	if _, _, err := web.Session().Create(nil, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("session by a token without session write: %v", err)
	}
	mgmt, _ := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(cl.base, "http://"), Token: mgmtTok})
	if _, _, err := mgmt.Session().Create(nil, nil); err != nil {
		t.Fatalf("session by the management token: %v", err)
	}
}

// Two agents that each take the other for a server forward a request
// twice, then refuse it; a client that knows no server says so.
func TestRaftForwardLoop(t *testing.T) {
	var addrB atomic.Value
	addrB.Store("")
	a := startRaftAgent(t, "ca", false, func() []string { return []string{addrB.Load().(string)} }, nil)
	b := startRaftAgent(t, "cb", false, func() []string { return []string{strings.TrimPrefix(a.base, "http://")} }, nil)
	addrB.Store(strings.TrimPrefix(b.base, "http://"))
	if code, body, _ := httpDo(t, "PUT", a.base+"/v1/kv/x", "v"); code != 500 || !strings.Contains(body, "forwarding loop") {
		t.Fatalf("a loop: %d %q", code, body)
	}
	lone := startRaftAgent(t, "cc", false, func() []string { return nil }, nil)
	if code, body, _ := httpDo(t, "GET", lone.base+"/v1/kv/x", ""); code != 500 || !strings.Contains(body, "No known Consul servers") {
		t.Fatalf("no servers: %d %q", code, body)
	}
}

// The registry's KVMaxBytes bounds the Raft store too: a write or txn past
// it is a 413, an overwrite that keeps the size is not.
func TestRaftKVMaxBytes(t *testing.T) {
	a := startRaftAgentReg(t, "s0", true, nil, nil, func(c *registry.Config) { c.KVMaxBytes = 100 })
	if err := a.node.Bootstrap([]raft.Server{{ID: "s0", Address: a.port, Voter: true}}); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 10*time.Second, "s0 leads", a.node.IsLeader)
	v := strings.Repeat("x", 58) // with its 2-byte key, 60 bytes
	for _, c := range []struct {
		method, path, body string
		code               int
	}{
		{"PUT", "/v1/kv/k1", v, 200},
		{"PUT", "/v1/kv/k2", v, 413},
		{"PUT", "/v1/kv/k1", strings.Repeat("y", 58), 200},
		{"PUT", "/v1/txn", `[{"KV":{"Verb":"set","Key":"k3","Value":"` + strings.Repeat("QUJD", 15) + `"}}]`, 413},
		{"DELETE", "/v1/kv/k1", "", 200},
		{"PUT", "/v1/kv/k2", v, 200},
	} {
		if code, body, _ := httpDo(t, c.method, a.base+c.path, c.body); code != c.code {
			t.Fatalf("%s %s: %d %q, want %d", c.method, c.path, code, body, c.code)
		}
	}
}

// A client whose server list holds one that is gone still reads: the
// next server is tried.
func TestRaftClientSkipsDeadServer(t *testing.T) {
	a := startSingleServer(t)
	if _, err := a.client.KV().Put(&consul.KVPair{Key: "k", Value: []byte("v")}, nil); err != nil {
		t.Fatal(err)
	}
	dead := freePort(t)
	cl := startRaftAgent(t, "c0", false, func() []string { return []string{dead, a.port} }, nil)
	for range 8 { // the order is random: the dead one comes first about half the time
		if p, _, err := cl.client.KV().Get("k", nil); err != nil || p == nil {
			t.Fatalf("read through a client with a dead server listed: %+v %v", p, err)
		}
	}
}

// DELETE /v1/operator/raft/peer through a client removes a server; a
// blocking session list wakes when a session is made.
func TestRaftRemovePeerAndSessionBlocking(t *testing.T) {
	servers, client := startGroup(t)
	lead := leaderOf(servers)
	follower := followerOf(servers, lead)
	_, meta, err := client.client.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		list, _, err := client.client.Session().List(&consul.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second})
		if err == nil && len(list) != 1 {
			err = fmt.Errorf("woke with %d sessions", len(list))
		}
		got <- err
	}()
	if _, _, err := follower.client.Session().Create(nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a blocking session list did not wake")
	}

	if err := client.client.Operator().RaftRemovePeerByID(follower.name, nil); err != nil {
		t.Fatalf("remove peer: %v", err)
	}
	cfg, err := client.client.Operator().RaftGetConfiguration(nil)
	if err != nil || len(cfg.Servers) != 2 {
		t.Fatalf("after removing %s: %+v %v", follower.name, cfg, err)
	}
	if code, body, _ := httpDo(t, "DELETE", client.base+"/v1/operator/raft/peer?id=nobody", ""); code != 500 || !strings.Contains(body, "nobody") {
		t.Fatalf("remove of an unknown id: %d %q", code, body)
	}
	if code, _, _ := httpDo(t, "DELETE", client.base+"/v1/operator/raft/peer", ""); code != 400 {
		t.Fatalf("remove without id or address: %d", code)
	}
}

// TestRaftForwardReusesConnections: writes through a follower reach the
// leader over kept-alive connections, not one new connection each (which
// cost a follower a fifth of its CPU under load, deploy/bench/README.md).
func TestRaftForwardReusesConnections(t *testing.T) {
	servers, _ := startGroup(t)
	lead := leaderOf(servers)
	follower := followerOf(servers, lead)
	count := func() (n int64) {
		for _, s := range servers {
			n += s.mux.httpConns.Load()
		}
		return n
	}
	const writes = 30
	before := count()
	for i := range writes {
		if _, err := follower.client.KV().Put(&consul.KVPair{Key: fmt.Sprintf("reuse/%d", i), Value: []byte("x")}, nil); err != nil {
			t.Fatalf("write %d through a follower: %v", i, err)
		}
	}
	// One connection carries them all; a few more are the mirror's and
	// any new leader's.
	if n := count() - before; n > writes/3 {
		t.Fatalf("%d writes through a follower opened %d connections to the servers", writes, n)
	}
}

// TestRaftForwardFrames: writes through a follower (a PUT, a CAS that
// fails, a txn, a DELETE, a write refused by the leader's own checks) go
// in frames, and answer what the leader's handler answered, its headers
// included; to a server that does not take frames they go over HTTP.
func TestRaftForwardFrames(t *testing.T) {
	servers, client := startGroup(t)
	lead := leaderOf(servers)
	follower := followerOf(servers, lead)
	frames := func() (n int64) {
		for _, s := range servers {
			n += s.mux.fwdConns.Load()
		}
		return n
	}
	check := func(via *raftAgent, key string) {
		t.Helper()
		kv := via.client.KV()
		if _, err := kv.Put(&consul.KVPair{Key: key, Value: []byte("v1")}, nil); err != nil {
			t.Fatalf("put through %s: %v", via.name, err)
		}
		ok, _, err := kv.CAS(&consul.KVPair{Key: key, Value: []byte("v2"), ModifyIndex: 1}, nil)
		if err != nil || ok {
			t.Fatalf("a CAS on a stale index through %s: %v, %v; want false, nil", via.name, ok, err)
		}
		ok, resp, _, err := via.client.Txn().Txn(consul.TxnOps{{KV: &consul.KVTxnOp{Verb: consul.KVSet, Key: key + "/t", Value: []byte("t")}}}, nil)
		if err != nil || !ok || len(resp.Results) != 1 {
			t.Fatalf("txn through %s: %v %+v %v", via.name, ok, resp, err)
		}
		req, _ := http.NewRequest("PUT", via.base+"/v1/kv/"+key+"?flags=x", strings.NewReader("v"))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 400 {
			t.Fatalf("a bad flags through %s: %d %q, want 400", via.name, res.StatusCode, body)
		}
		req, _ = http.NewRequest("DELETE", via.base+"/v1/kv/"+key, nil)
		if res, err = http.DefaultClient.Do(req); err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || strings.TrimSpace(string(body)) != "true" || res.Header.Get("X-Consul-KnownLeader") != "true" {
			t.Fatalf("delete through %s: %d %q %v", via.name, res.StatusCode, body, res.Header)
		}
		p, _, err := lead.client.KV().Get(key+"/t", nil)
		if err != nil || p == nil || string(p.Value) != "t" {
			t.Fatalf("the txn's write on the leader: %+v, %v", p, err)
		}
	}
	check(follower, "frames/a")
	check(client, "frames/b")
	if frames() == 0 {
		t.Fatal("no frame connection was opened: the writes went over HTTP")
	}
	// Servers that do not know frames: the same writes, over HTTP.
	for _, s := range servers {
		s.mux.noFrames.Store(true)
	}
	other := &raftAgent{}
	for _, s := range servers {
		if s != lead && s != follower {
			other = s
		}
	}
	before := frames()
	check(other, "frames/c")
	if n := frames() - before; n != 0 {
		t.Fatalf("%d frame connections to servers that refuse them", n)
	}
}
