package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// fakeAgent answers /v1/status/leader with leader and /v1/agent/self with
// a member at 127.0.0.1:serf whose "port" tag is tag (none when empty),
// and keeps a one-key KV with Consul's index and CAS rules.
func fakeAgent(t *testing.T, leader string, serf int, tag string) *httptest.Server {
	var index int64
	var stored bool
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/status/leader":
			json.NewEncoder(w).Encode(leader)
		case r.URL.Path == "/v1/agent/self":
			tags := map[string]string{"role": "node"}
			if tag != "" {
				tags["port"] = tag
			}
			json.NewEncoder(w).Encode(map[string]any{"Member": map[string]any{"Addr": "127.0.0.1", "Port": serf, "Tags": tags}})
		case strings.HasPrefix(r.URL.Path, "/v1/kv/") && r.Method == http.MethodGet:
			if !stored {
				w.WriteHeader(http.StatusNotFound)
				return
			}
			json.NewEncoder(w).Encode([]map[string]any{{"Key": "k", "ModifyIndex": index}})
		case strings.HasPrefix(r.URL.Path, "/v1/kv/") && r.Method == http.MethodPut:
			if c := r.URL.Query().Get("cas"); c != "" && c != casIndex(index, stored) {
				w.Write([]byte("false"))
				return
			}
			index++
			stored = true
			w.Write([]byte("true"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// casIndex is the ?cas= value that wins: the index, or 0 for an absent key.
func casIndex(i int64, stored bool) string {
	if !stored {
		return "0"
	}
	return strconv.FormatInt(i, 10)
}

// TestPierLeaderRaft: with Raft, every agent names the leader's server
// address, which is neither an HTTP endpoint nor a gossip address; the
// second agent is found by the address the script gave it, or by its
// "port" tag when the script gave none.
func TestPierLeaderRaft(t *testing.T) {
	const leaderAddr = "127.0.0.1:23052"
	var eps []string
	for i, tag := range []string{"23051", "23052", "23053"} {
		eps = append(eps, strings.TrimPrefix(fakeAgent(t, leaderAddr, 23041+i, tag).URL, "http://"))
	}
	servers := []string{"127.0.0.1:23051", "127.0.0.1:23052", "127.0.0.1:23053"}
	for _, srv := range [][]string{servers, nil} {
		i, addr, agree, err := pierLeader(context.Background(), eps, srv)
		if err != nil || i != 1 || addr != leaderAddr || !agree {
			t.Errorf("server-addrs %v: leader %d %q agree=%v err=%v, want 1 %q agree", srv, i, addr, agree, err, leaderAddr)
		}
	}
}

// TestPierLeaderGossip: today each agent names its own gossip address;
// the first endpoint's answer is taken and the disagreement reported.
func TestPierLeaderGossip(t *testing.T) {
	var eps []string
	for i := range 3 {
		eps = append(eps, strings.TrimPrefix(fakeAgent(t, "127.0.0.1:"+strconv.Itoa(23041+i), 23041+i, "").URL, "http://"))
	}
	i, _, agree, err := pierLeader(context.Background(), eps, nil)
	if err != nil || i != 0 || agree {
		t.Errorf("leader %d agree=%v err=%v, want 0 and a disagreement", i, agree, err)
	}
}

// TestPierCAS: a read gives the index a CAS must name; a stale index loses.
func TestPierCAS(t *testing.T) {
	p := newPier(strings.TrimPrefix(fakeAgent(t, "", 1, "").URL, "http://"), 1)
	defer p.close()
	ctx := context.Background()
	if rev, err := p.get(ctx, "k"); err != nil || rev != 0 {
		t.Fatalf("get of an absent key: %d %v", rev, err)
	}
	if ok, err := p.cas(ctx, "k", []byte("v"), 0); !ok || err != nil {
		t.Fatalf("cas=0 on an absent key: %v %v", ok, err)
	}
	rev, err := p.get(ctx, "k")
	if err != nil || rev != 1 {
		t.Fatalf("get: %d %v", rev, err)
	}
	if err := p.put(ctx, "k", []byte("w")); err != nil {
		t.Fatal(err)
	}
	if ok, err := p.cas(ctx, "k", []byte("x"), rev); ok || err != nil {
		t.Fatalf("cas on a stale index: %v %v, want false", ok, err)
	}
}
