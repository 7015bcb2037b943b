package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKVAcrossAgents: pier kv on one agent (the server), curl on another
// (a client, which forwards to it).
func TestKVAcrossAgents(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, append(soloServer, "-node", "kva", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")...)
	b := startAgent(t, "-node", "kvb", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)

	out, errOut, rc := pier(t, "kv", "put", "-http-addr", a.addr, "config/app/db", "postgres://db:5432")
	if rc != 0 || !strings.Contains(out, "Success! Data written to: config/app/db") {
		t.Fatalf("pier kv put: %d %s%s", rc, out, errOut)
	}
	got := watch(t, "http://"+b.addr+"/v1/kv/config/?recurse", 10*time.Second, func(ps []struct {
		Key   string
		Value []byte
	}) bool {
		return len(ps) == 1
	})
	if got[0].Key != "config/app/db" || string(got[0].Value) != "postgres://db:5432" {
		t.Errorf("b sees %+v", got)
	}
	if code, body := curl(t, "http://"+b.addr+"/v1/kv/config/app/db?raw"); code != 200 || body != "postgres://db:5432" {
		t.Errorf("raw on b: %d %q", code, body)
	}
	out, _, rc = pier(t, "kv", "get", "-http-addr", b.addr, "config/app/db")
	if rc != 0 || strings.TrimSpace(out) != "postgres://db:5432" {
		t.Errorf("pier kv get on b: %d %q", rc, out)
	}
	if _, _, rc = pier(t, "kv", "delete", "-http-addr", b.addr, "config/app/db"); rc != 0 {
		t.Fatalf("pier kv delete: %d", rc)
	}
	watch(t, "http://"+a.addr+"/v1/kv/?keys", 10*time.Second, func(keys []string) bool { return len(keys) == 0 })
	_, errOut, rc = pier(t, "kv", "get", "-http-addr", a.addr, "config/app/db")
	if rc != 1 || !strings.Contains(errOut, "no key exists") {
		t.Errorf("get of a deleted key: %d %q", rc, errOut)
	}
}

// TestKVRouteReachesFrontDoor: a route written with pier kv on a backend
// node is served by the front door on another node.
func TestKVRouteReachesFrontDoor(t *testing.T) {
	requireCurl(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "api got %s", r.URL.Path)
	}))
	defer backend.Close()
	front := startAgent(t, append(soloServer, "-node", "front", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-proxy-addr", "127.0.0.1:0")...)
	back := startAgent(t, "-node", "back", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", front.gossip)
	port := backend.URL[strings.LastIndexByte(backend.URL, ':')+1:]
	if code, body := curl(t, "-X", "PUT", "-d", `{"Name":"api","Address":"127.0.0.1","Port":`+port+`}`, "http://"+back.addr+"/v1/agent/service/register"); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	watch(t, "http://"+front.addr+"/v1/catalog/service/api", 10*time.Second, func(es []struct{ Node string }) bool { return len(es) == 1 })
	if code, _ := curl(t, "http://"+front.proxyAddr()+"/api/hello"); code != 404 {
		t.Fatalf("before the route: %d", code)
	}
	start := time.Now()
	if _, errOut, rc := pier(t, "kv", "put", "-http-addr", back.addr, "pier/routes/api", "path: /api/\nservice: api\nstrip: /api\n"); rc != 0 {
		t.Fatalf("pier kv put: %s", errOut)
	}
	for {
		code, body := curl(t, "http://"+front.proxyAddr()+"/api/hello")
		if code == 200 {
			if body != "api got /hello" {
				t.Errorf("through the KV route: %q", body)
			}
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the KV route was not served within 10s: %d %s", code, body)
		}
	}
	t.Logf("the route was served %v after pier kv put returned", time.Since(start))
}

// TestKVExportImport: `pier kv export` writes consul kv export's JSON and
// `pier kv import` reads it back, flags and binary values included, under
// -prefix too; an export with a mistake anywhere writes nothing.
func TestKVExportImport(t *testing.T) {
	requireCurl(t)
	a := startAgent(t, "-dev", "-node", "kvx", "-data-dir", t.TempDir())
	kv := func(args ...string) (string, string, int) {
		t.Helper()
		return pier(t, append([]string{"kv", args[0], "-http-addr", a.addr}, args[1:]...)...)
	}
	put := func(path, body string) {
		t.Helper()
		if code, b := curl(t, "-X", "PUT", "--data-binary", body, "http://"+a.addr+path); code != 200 {
			t.Fatalf("PUT %s: %d %s", path, code, b)
		}
	}
	put("/v1/kv/app/db", "postgres://db:5432")
	put("/v1/kv/app/flagged?flags=42", "x")
	bin := filepath.Join(t.TempDir(), "bin")
	os.WriteFile(bin, []byte("\x00\xff\n"), 0o600)
	put("/v1/kv/app/bin", "@"+bin) // a NUL cannot be a command-line argument
	put("/v1/kv/other/k", "not exported")

	out, errOut, rc := kv("export", "app/")
	if rc != 0 {
		t.Fatalf("export: rc=%d %s", rc, errOut)
	}
	var entries []struct {
		Key   string `json:"key"`
		Flags uint64 `json:"flags"`
		Value string `json:"value"`
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 3 {
		t.Fatalf("export: %v\n%s", err, out)
	}
	file := filepath.Join(t.TempDir(), "app.json")
	os.WriteFile(file, []byte(out), 0o600)

	if _, errOut, rc := kv("delete", "-recurse", "app/"); rc != 0 {
		t.Fatalf("delete: %s", errOut)
	}
	out, errOut, rc = kv("import", "@"+file)
	if rc != 0 || strings.Count(out, "Imported: ") != 3 {
		t.Fatalf("import: rc=%d %s%s", rc, out, errOut)
	}
	again, _, _ := kv("export", "app/")
	if again != string(must(os.ReadFile(file))) {
		t.Errorf("export after import differs:\n%s\nwant\n%s", again, must(os.ReadFile(file)))
	}
	if _, b := curl(t, "http://"+a.addr+"/v1/kv/app/bin?raw"); b != "\x00\xff\n" {
		t.Errorf("binary value after import: %q", b)
	}
	if out, _, rc := kv("import", "-prefix", "copy/", "@"+file); rc != 0 || !strings.Contains(out, "Imported: copy/app/flagged") {
		t.Errorf("import -prefix: rc=%d %s", rc, out)
	}
	if _, b := curl(t, "http://"+a.addr+"/v1/kv/copy/app/flagged"); !strings.Contains(b, `"Flags":42`) {
		t.Errorf("flags under -prefix: %s", b)
	}

	// A bad value in the second entry: the first is not written either.
	bad := `[{"key":"new/one","flags":0,"value":"b25l"},{"key":"new/two","flags":0,"value":"not base64!"}]`
	_, errOut, rc = kv("import", bad)
	if line := strings.TrimSpace(errOut); rc != 1 || !strings.Contains(line, "entry 1") || !strings.Contains(line, "base64") {
		t.Errorf("import with a bad value: rc=%d %q", rc, line)
	}
	if code, _ := curl(t, "http://"+a.addr+"/v1/kv/new/one"); code != 404 {
		t.Errorf("new/one was written by an import that failed: %d", code)
	}
	for _, c := range []struct {
		arg, msg string
	}{{"{not json", "not consul kv export's JSON"}, {"@" + filepath.Join(t.TempDir(), "none.json"), "no such file"}} {
		if _, errOut, rc := kv("import", c.arg); rc != 1 || !strings.Contains(errOut, c.msg) {
			t.Errorf("import %q: rc=%d %q", c.arg, rc, errOut)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
