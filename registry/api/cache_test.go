package api_test

import (
	"net/http"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
)

func TestAgentCache(t *testing.T) {
	a := startAgentWith(t, nil)
	reg := func(id string) {
		t.Helper()
		if err := a.client.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: id, Name: "web", Port: 80}); err != nil {
			t.Fatal(err)
		}
	}
	reg("web1")
	q := &consul.QueryOptions{UseCache: true}

	_, m, err := a.client.Catalog().Services(q)
	if err != nil || m.CacheHit {
		t.Fatalf("first cached catalog/services: hit=%v, %v; want a MISS", m.CacheHit, err)
	}
	_, m, err = a.client.Catalog().Services(q)
	if err != nil || !m.CacheHit || m.CacheAge != 0 {
		t.Fatalf("second cached catalog/services: hit=%v age=%v, %v; want a HIT of age 0", m.CacheHit, m.CacheAge, err)
	}

	_, m, err = a.client.Catalog().Service("web", "", q)
	if err != nil || m.CacheHit {
		t.Errorf("first cached catalog/service/web: hit=%v, %v", m.CacheHit, err)
	}
	_, m, err = a.client.Health().Service("web", "", false, q)
	if err != nil || m.CacheHit {
		t.Errorf("first cached health/service/web: hit=%v, %v", m.CacheHit, err)
	}
	// A HIT is never stale: the entry is the agent's current view, as a
	// background-refreshed entry in Consul. max-age and must-revalidate do
	// not apply to these types, as in Consul (must-revalidate is checked below).
	reg("web2")
	strict := &consul.QueryOptions{UseCache: true, MaxAge: time.Second, StaleIfError: time.Minute}
	got, m, err := a.client.Health().Service("web", "", false, strict)
	if err != nil || !m.CacheHit || len(got) != 2 {
		t.Errorf("cached health/service/web after a registration: hit=%v, %d instances, %v; want a HIT with both", m.CacheHit, len(got), err)
	}
	// Other query parameters are another entry.
	if _, m, _ := a.client.Health().Service("web", "", true, q); m.CacheHit {
		t.Error("?passing shared the entry of the unfiltered query")
	}

	// A blocking query at the current index waits for a change: a MISS.
	_, m, _ = a.client.Catalog().Service("web", "", q)
	idx := m.LastIndex
	_, m, err = a.client.Catalog().Service("web", "", &consul.QueryOptions{UseCache: true, WaitIndex: idx, WaitTime: 100 * time.Millisecond})
	if err != nil || m.CacheHit {
		t.Errorf("blocking cached query at index %d: hit=%v, %v; want a MISS", idx, m.CacheHit, err)
	}
	_, m, err = a.client.Catalog().Service("web", "", &consul.QueryOptions{UseCache: true, WaitIndex: idx - 1})
	if err != nil || !m.CacheHit {
		t.Errorf("cached query below the current index: hit=%v, %v; want a HIT at once", m.CacheHit, err)
	}

	// Without ?cached there is no cache header.
	resp, err := http.Get(a.base + "/v1/catalog/services")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := resp.Header.Get("X-Cache"); h != "" {
		t.Errorf("uncached request has X-Cache %q", h)
	}
	req, _ := http.NewRequest("GET", a.base+"/v1/health/service/web?cached", nil)
	req.Header.Set("Cache-Control", "max-age=0, must-revalidate")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "HIT" || resp.Header.Get("Age") != "0" {
		t.Errorf("must-revalidate: %d X-Cache %q Age %q; want a HIT of age 0, as for Consul's refreshing types",
			resp.StatusCode, resp.Header.Get("X-Cache"), resp.Header.Get("Age"))
	}
	for _, tc := range []struct{ query, cc, want string }{
		{"?cached", "max-age=soon", "Invalid Cache-Control header."},
		{"?cached&consistent", "", "Cannot specify ?cached with ?consistent, conflicting semantics."},
	} {
		req, _ := http.NewRequest("GET", a.base+"/v1/health/service/web"+tc.query, nil)
		if tc.cc != "" {
			req.Header.Set("Cache-Control", tc.cc)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 200)
		n, _ := resp.Body.Read(b)
		resp.Body.Close()
		if resp.StatusCode != 400 || string(b[:n]) != tc.want+"\n" {
			t.Errorf("%s %q: %d %q, want 400 %q", tc.query, tc.cc, resp.StatusCode, b[:n], tc.want)
		}
	}
}
