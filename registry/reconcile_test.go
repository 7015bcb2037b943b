package registry

import (
	"strings"
	"testing"
)

// A reload keeps unchanged checks' status, removes config services that
// left the files, leaves API services alone and reports a bad definition
// without stopping at it.
func TestSyncConfigServices(t *testing.T) {
	r := rtNew(t, t.TempDir())
	def := func(js string) ConfigService {
		s, cs := rtBuild(t, js)
		return ConfigService{File: "a.json", Service: s, Checks: cs}
	}
	web := def(`{"ID":"web","Name":"web","Port":80,"Checks":[{"CheckID":"web-ttl","TTL":"30s"}]}`)
	db := def(`{"ID":"db","Name":"db","Port":5432}`)
	if _, err := r.SyncConfigServices([]ConfigService{web, db}); err != nil {
		t.Fatal(err)
	}
	rtReg(t, r, SourceAPI, `{"ID":"api-1","Name":"api","Port":1}`)
	if err := r.UpdateCheck("web-ttl", StatusPassing, "fine"); err != nil {
		t.Fatal(err)
	}

	// cache claims web's check: refused, and web keeps it.
	bad := def(`{"ID":"cache","Name":"cache","Port":6379,"Checks":[{"CheckID":"web-ttl","TTL":"30s"}]}`)
	removed, err := r.SyncConfigServices([]ConfigService{web, bad})
	if err == nil || !strings.Contains(err.Error(), `config file a.json: service "cache"`) {
		t.Errorf("a bad definition: got %v, want an error naming the file and service", err)
	}
	if removed != 1 {
		t.Errorf("removed %d services, want 1 (db)", removed)
	}
	snap := r.Snapshot()
	node := r.Config().NodeName
	if _, ok := snap.NodeService(node, "db"); ok {
		t.Error("db, gone from the files, is still registered")
	}
	if _, ok := snap.NodeService(node, "api-1"); !ok {
		t.Error("the API's service was removed by a config reload")
	}
	for _, c := range snap.NodeChecks(node, "web") {
		if c.CheckID == "web-ttl" && (c.Status != StatusPassing || c.Output != "fine") {
			t.Errorf("unchanged check after reload: %s %q, want passing \"fine\"", c.Status, c.Output)
		}
	}
}
