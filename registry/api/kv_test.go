package api_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry/api"
)

// TestKVWithConsulClient drives the KV API with the official client.
func TestKVWithConsulClient(t *testing.T) {
	prom := prometheus.NewRegistry()
	a := startAPIAgent(t, func(c *api.Config) { c.Registerer = prom })
	kv := a.client.KV()

	if p, meta, err := kv.Get("app/missing", nil); err != nil || p != nil || meta.LastIndex == 0 {
		t.Fatalf("missing key: %v %v %+v", p, err, meta)
	}
	if _, err := kv.Put(&consul.KVPair{Key: "app/config/db", Value: []byte("postgres://x"), Flags: 42}, nil); err != nil {
		t.Fatal(err)
	}
	kv.Put(&consul.KVPair{Key: "app/config/cache", Value: []byte("redis")}, nil)
	kv.Put(&consul.KVPair{Key: "app/toggles/new-ui", Value: []byte("on")}, nil)
	kv.Put(&consul.KVPair{Key: "other", Value: nil}, nil)

	p, _, err := kv.Get("app/config/db", nil)
	if err != nil || p == nil || string(p.Value) != "postgres://x" || p.Flags != 42 || p.CreateIndex == 0 || p.ModifyIndex != p.CreateIndex {
		t.Fatalf("get: %+v %v", p, err)
	}
	list, _, err := kv.List("app/", nil)
	if err != nil || len(list) != 3 || list[0].Key != "app/config/cache" || list[2].Key != "app/toggles/new-ui" {
		t.Fatalf("list: %+v %v", list, err)
	}
	keys, _, err := kv.Keys("app/", "/", nil)
	if err != nil || strings.Join(keys, ",") != "app/config/,app/toggles/" {
		t.Fatalf("keys with separator: %v %v", keys, err)
	}
	keys, _, _ = kv.Keys("", "", nil)
	if len(keys) != 4 {
		t.Fatalf("all keys: %v", keys)
	}

	// Check-and-set: 0 creates only; an index must match the key's.
	ok, _, err := kv.CAS(&consul.KVPair{Key: "app/config/db", Value: []byte("y"), ModifyIndex: 0}, nil)
	if err != nil || ok {
		t.Fatalf("cas=0 on an existing key: %v %v", ok, err)
	}
	ok, _, _ = kv.CAS(&consul.KVPair{Key: "app/config/db", Value: []byte("y"), ModifyIndex: p.ModifyIndex + 1000}, nil)
	if ok {
		t.Fatal("cas with a wrong index succeeded")
	}
	ok, _, _ = kv.CAS(&consul.KVPair{Key: "app/config/db", Value: []byte("y"), ModifyIndex: p.ModifyIndex}, nil)
	if !ok {
		t.Fatal("cas with the right index failed")
	}
	p2, _, _ := kv.Get("app/config/db", nil)
	if string(p2.Value) != "y" || p2.ModifyIndex <= p.ModifyIndex || p2.CreateIndex != p.CreateIndex {
		t.Fatalf("after cas: %+v (before %+v)", p2, p)
	}

	// A blocking query on a key wakes when it changes.
	_, meta, _ := kv.Get("app/toggles/new-ui", nil)
	start := time.Now()
	type answer struct {
		p    *consul.KVPair
		meta *consul.QueryMeta
		err  error
	}
	blocked := make(chan answer, 1)
	go func() {
		p, m, err := kv.Get("app/toggles/new-ui", (&consul.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second}).WithContext(context.Background()))
		blocked <- answer{p, m, err}
	}()
	waitGauge(t, prom, 1) // the query is blocked in the server
	kv.Put(&consul.KVPair{Key: "app/toggles/new-ui", Value: []byte("off")}, nil)
	ans := <-blocked
	got, meta2, err := ans.p, ans.meta, ans.err
	if err != nil || string(got.Value) != "off" || meta2.LastIndex <= meta.LastIndex || time.Since(start) > 20*time.Second {
		t.Fatalf("blocking get: %+v %v %+v", got, err, meta2)
	}

	// Deletes: one key, a cas delete, a tree.
	if _, err := kv.Delete("other", nil); err != nil {
		t.Fatal(err)
	}
	ok, _, _ = kv.DeleteCAS(&consul.KVPair{Key: "app/config/db", ModifyIndex: 1}, nil)
	if ok {
		t.Fatal("delete-cas with a wrong index succeeded")
	}
	if _, err := kv.DeleteTree("app/config/", nil); err != nil {
		t.Fatal(err)
	}
	keys, _, _ = kv.Keys("", "", nil)
	if strings.Join(keys, ",") != "app/toggles/new-ui" {
		t.Fatalf("after deletes: %v", keys)
	}
}

func TestKVRawAndErrors(t *testing.T) {
	a := startAgent(t)
	do := func(method, path, body string) (int, string, http.Header) {
		req, _ := http.NewRequest(method, a.base+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), resp.Header
	}
	if code, body, _ := do("PUT", "/v1/kv/feature/x?flags=7", "enabled"); code != 200 || strings.TrimSpace(body) != "true" {
		t.Fatalf("put: %d %q", code, body)
	}
	if code, body, _ := do("POST", "/v1/kv/feature/y", "1"); code != 200 || strings.TrimSpace(body) != "true" {
		t.Fatalf("post: %d %q", code, body)
	}
	if code, body, _ := do("GET", "/v1/kv/feature/x?raw", ""); code != 200 || body != "enabled" {
		t.Fatalf("raw: %d %q", code, body)
	}
	if code, _, h := do("GET", "/v1/kv/nope", ""); code != 404 || h.Get("X-Consul-Index") == "" {
		t.Fatalf("missing key: %d, index %q", code, h.Get("X-Consul-Index"))
	}
	if code, body, _ := do("PUT", "/v1/kv/feature/x?cas=abc", "v"); code != 400 || !strings.Contains(body, "cas") {
		t.Fatalf("bad cas: %d %q", code, body)
	}
	if code, body, _ := do("PUT", "/v1/kv/", "v"); code != 400 || !strings.Contains(body, "key") {
		t.Fatalf("no key: %d %q", code, body)
	}
	if code, _, _ := do("PUT", "/v1/kv/big", strings.Repeat("x", 600<<10)); code != 413 {
		t.Fatalf("a value over 512 KiB: %d", code)
	}
	if code, body, _ := do("GET", "/v1/kv/feature/x?raw", ""); code != 200 || body != "enabled" {
		t.Fatalf("stored value changed by bad writes: %d %q", code, body)
	}
}
