package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry/gossip"
)

// mountTmpfs mounts a tmpfs of size (mount's -o size=, such as "256k") on a
// fresh directory, unmounted when the test ends. Where mounting is not
// permitted the test is skipped, unless it runs in CI (.ci/run sets
// PIER_REQUIRE_MOUNT=1), where that is a failure.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	needBinary(t)
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("cannot mount a %s tmpfs for a full data dir (needs root or CAP_SYS_ADMIN): %v %s", size, err, bytes.TrimSpace(out))
		if os.Getenv("PIER_REQUIRE_MOUNT") == "1" || os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg + "; set PIER_REQUIRE_MOUNT=1 to make this a failure")
	}
	// Registered after t.TempDir's removal, so run before it; the agents'
	// kills, registered later still, run before this.
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", dir, err, out)
		}
	})
	return dir
}

// fullDisk is a log store backend and the data dir that fills under it.
// The WAL preallocates whole segments (1 MiB here, the least Consul
// allows) and refuses writes once the next one no longer fits, so its
// tmpfs holds two segments and its fill takes more writes than bbolt's.
type fullDisk struct {
	backend string
	size    string // of the tmpfs a server of one fills
	writes  int    // enough to fill it
}

var fullDisks = []fullDisk{{"boltdb", "256k", 400}, {"wal", "2304k", 1200}}

// args are the agent's arguments that select the backend (a config file
// beside the data dir, not in it).
func (fd fullDisk) args(t *testing.T) []string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "logstore.json")
	cfg := fmt.Sprintf(`{"raft_logstore": {"backend": %q, "wal": {"segment_size_mb": 1}}}`, fd.backend)
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"-config-file", file}
}

// eachFullDisk runs test once per backend.
func eachFullDisk(t *testing.T, test func(t *testing.T, fd fullDisk)) {
	for _, fd := range fullDisks {
		t.Run(fd.backend, func(t *testing.T) { test(t, fd) })
	}
}

// kvOp is one write sent to the agent and what it answered.
type kvOp struct {
	del   bool
	key   string
	value string
	code  int
	body  string
}

func kvDo(c *http.Client, addr string, op *kvOp) error {
	method, body := "PUT", io.Reader(strings.NewReader(op.value))
	if op.del {
		method, body = "DELETE", nil
	}
	req, err := http.NewRequest(method, "http://"+addr+"/v1/kv/"+op.key, body)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	op.code, op.body = resp.StatusCode, strings.TrimSpace(string(b))
	return err
}

// kvDump reads every key under prefix with its value.
func kvDump(t *testing.T, addr, prefix string) map[string]string {
	t.Helper()
	return kvDumpQuery(t, addr, prefix, "recurse")
}

// kvDumpQuery is kvDump with a query of its own (recurse&stale: what this
// server itself holds).
func kvDumpQuery(t *testing.T, addr, prefix, query string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v1/kv/" + prefix + "?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	if resp.StatusCode == http.StatusNotFound {
		return out
	}
	var ps []struct {
		Key   string
		Value []byte
	}
	if err := json.NewDecoder(resp.Body).Decode(&ps); err != nil {
		t.Fatalf("GET %s?recurse: %d %v", prefix, resp.StatusCode, err)
	}
	for _, p := range ps {
		out[p.Key] = string(p.Value)
	}
	return out
}

// expectedKV replays the writes a client saw acknowledged, in the order
// each key's single writer sent them: what the store must hold.
func expectedKV(ops []kvOp) map[string]string {
	want := map[string]string{}
	for _, op := range ops {
		if op.code != 200 {
			continue
		}
		if op.del {
			delete(want, op.key)
		} else {
			want[op.key] = op.value
		}
	}
	return want
}

// checkRefusals requires every write that was not acknowledged to be a
// 500 that names the cause, and at least one of them (the disk did fill).
func checkRefusals(t *testing.T, ops []kvOp) (acked, refused int) {
	t.Helper()
	for _, op := range ops {
		switch {
		case op.code == 200 && op.body == "true":
			acked++
		case op.code == 500 && strings.Contains(op.body, "space left on device"):
			refused++
		default:
			t.Errorf("%s %s: %d %q, want 200 true or a 500 naming the full disk", map[bool]string{false: "PUT", true: "DELETE"}[op.del], op.key, op.code, op.body)
		}
	}
	if refused == 0 {
		t.Errorf("the disk never filled in %d writes (or every refusal was answered 200)", len(ops))
	}
	return acked, refused
}

func diffKV(t *testing.T, when string, got, want map[string]string) {
	t.Helper()
	var bad []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			bad = append(bad, fmt.Sprintf("%s: acknowledged, missing", k))
		} else if g != v {
			bad = append(bad, fmt.Sprintf("%s: holds %.12q..., want the acknowledged %.12q...", k, g, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			bad = append(bad, fmt.Sprintf("%s: present, but its write was refused or its delete acknowledged", k))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("%s: %d keys differ from what was acknowledged:\n%s", when, len(bad), strings.Join(bad[:min(len(bad), 20)], "\n"))
	}
}

func value(key string, n, size int) string {
	s := fmt.Sprintf("%s#%d:", key, n)
	return s + strings.Repeat("v", max(size-len(s), 0))
}

// TestKVFullDisk fills a small data dir with KV writes and deletes: every
// write is answered 200 true only once it is on disk, or 500 naming the full
// disk and not applied; the agent's view agrees with what was acknowledged
// before and after kill -9 and a restart (on the still full disk).
func TestKVFullDisk(t *testing.T) { eachFullDisk(t, testKVFullDisk) }

func testKVFullDisk(t *testing.T, fd fullDisk) {
	dir := mountTmpfs(t, fd.size)
	args := append([]string{"-node", "full", "-data-dir", dir, "-bind", "127.0.0.1", "-server", "-bootstrap-expect", "1", "-server-port", "0"}, fd.args(t)...)
	a := startAgent(t, args...)
	c := &http.Client{Timeout: 10 * time.Second}

	var ops []kvOp
	refusedInARow := 0
	for i := 0; i < fd.writes && refusedInARow < 5; i++ {
		op := kvOp{key: fmt.Sprintf("fill/%03d", i), value: value(fmt.Sprintf("fill/%03d", i), i, 1500)}
		if i%7 == 6 {
			// Delete a key written earlier (acknowledged or not).
			op = kvOp{del: true, key: fmt.Sprintf("fill/%03d", i-3)}
		}
		if err := kvDo(c, a.addr, &op); err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op)
		if op.code == 200 {
			refusedInARow = 0
		} else {
			refusedInARow++
		}
	}
	// Deletes and overwrites of acknowledged keys on the full disk.
	want := expectedKV(ops)
	n := 0
	for k := range want {
		if n == 3 {
			break
		}
		n++
		for _, op := range []kvOp{{del: true, key: k}, {key: k, value: value(k, 1000+n, 1500)}} {
			if err := kvDo(c, a.addr, &op); err != nil {
				t.Fatal(err)
			}
			ops = append(ops, op)
		}
	}
	acked, refused := checkRefusals(t, ops)
	t.Logf("%d writes: %d acknowledged, %d refused", len(ops), acked, refused)
	want = expectedKV(ops)
	diffKV(t, "before the kill", kvDump(t, a.addr, "fill/"), want)

	a.stop(syscall.SIGKILL)
	b := startAgent(t, args...)
	diffKV(t, "after kill -9 and a restart", kvDump(t, b.addr, "fill/"), want)
}

// TestKVFullDiskConcurrent: four writers on a small data dir, each putting,
// overwriting and deleting keys of its own until the disk is full; then kill
// -9 and a restart. Each key's expected state is its writer's last
// acknowledged write.
func TestKVFullDiskConcurrent(t *testing.T) {
	eachFullDisk(t, func(t *testing.T, fd fullDisk) {
		if fd.backend == "boltdb" {
			fd.size = "1m"
		}
		testKVFullDiskConcurrent(t, fd)
	})
}

func testKVFullDiskConcurrent(t *testing.T, fd fullDisk) {
	dir := mountTmpfs(t, fd.size)
	args := append([]string{"-node", "full4", "-data-dir", dir, "-bind", "127.0.0.1", "-server", "-bootstrap-expect", "1", "-server-port", "0"}, fd.args(t)...)
	a := startAgent(t, args...)
	c := &http.Client{Timeout: 10 * time.Second}

	const writers = 4
	results := make([][]kvOp, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			refusedInARow := 0
			for i := 0; i < 1000 && refusedInARow < 10 && time.Now().Before(deadline); i++ {
				var op kvOp
				switch {
				case i%5 == 4: // delete a recent key
					op = kvOp{del: true, key: fmt.Sprintf("w%d/%03d", w, i-2)}
				case i%5 == 3 && i > 10: // overwrite an older key
					k := fmt.Sprintf("w%d/%03d", w, i-10)
					op = kvOp{key: k, value: value(k, i, 900)}
				default:
					k := fmt.Sprintf("w%d/%03d", w, i)
					op = kvOp{key: k, value: value(k, i, 900)}
				}
				if err := kvDo(c, a.addr, &op); err != nil {
					errs <- err
					return
				}
				results[w] = append(results[w], op)
				if op.code == 200 {
					refusedInARow = 0
				} else {
					refusedInARow++
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var all []kvOp
	for _, ops := range results {
		all = append(all, ops...)
	}
	acked, refused := checkRefusals(t, all)
	t.Logf("%d writes by %d writers: %d acknowledged, %d refused", len(all), writers, acked, refused)
	want := map[string]string{}
	for _, ops := range results {
		for k, v := range expectedKV(ops) {
			want[k] = v
		}
	}
	got := map[string]string{}
	for w := range writers {
		for k, v := range kvDump(t, a.addr, fmt.Sprintf("w%d/", w)) {
			got[k] = v
		}
	}
	diffKV(t, "before the kill", got, want)

	a.stop(syscall.SIGKILL)
	b := startAgent(t, args...)
	got = map[string]string{}
	for w := range writers {
		for k, v := range kvDump(t, b.addr, fmt.Sprintf("w%d/", w)) {
			got[k] = v
		}
	}
	diffKV(t, "after kill -9 and a restart", got, want)
}

// TestKVKeyNotUTF8 writes a key with an invalid UTF-8 byte to one of two
// joined agents: it is refused with a 400 naming the key, and no key
// appears or changes on either agent, also after a restart.
func TestKVKeyNotUTF8(t *testing.T) {
	dirA := t.TempDir()
	argsA := []string{"-node", "u8a", "-data-dir", dirA, "-bind", "127.0.0.1", "-server", "-bootstrap-expect", "1", "-server-port", "0"}
	a := startAgent(t, argsA...)
	b := startAgent(t, "-node", "u8b", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	c := &http.Client{Timeout: 10 * time.Second}

	good := "u/caf\u00e9-\ufffd-key" // valid UTF-8, U+FFFD included: kept byte for byte
	for _, op := range []*kvOp{{key: "u/" + url.PathEscape("caf\u00e9-\ufffd-key"), value: "good"}, {key: "u/bad%FFkey", value: "bad"}, {key: "u/bad%C3key", value: "bad"}} {
		if err := kvDo(c, a.addr, op); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(op.key, "u/bad") {
			if op.code != 400 || !strings.Contains(op.body, "not valid UTF-8") || !strings.Contains(op.body, `u/bad\x`) {
				t.Errorf("PUT %s: %d %q, want a 400 naming the key", op.key, op.code, op.body)
			}
		} else if op.code != 200 || op.body != "true" {
			t.Fatalf("PUT %s: %d %q", op.key, op.code, op.body)
		}
	}
	if _, errOut, rc := pier(t, "kv", "put", "-http-addr", a.addr, "u/cli\xffkey", "bad"); rc != 1 || !strings.Contains(errOut, `"u/cli\xffkey" is not valid UTF-8`) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 {
		t.Errorf("pier kv put of an invalid key: rc=%d %q", rc, errOut)
	}
	want := map[string]string{good: "good"}
	watch(t, "http://"+b.addr+"/v1/kv/u/?recurse", 10*time.Second, func(ps []struct{ Key string }) bool { return len(ps) == 1 })
	// A later write, so that by the time b has it, b would also have had
	// anything pushed back or relayed about the first ones.
	if op := (kvOp{key: "v/last", value: "x"}); kvDo(c, a.addr, &op) != nil || op.code != 200 {
		t.Fatalf("PUT v/last: %d %s", op.code, op.body)
	}
	watch(t, "http://"+b.addr+"/v1/kv/v/?recurse", 10*time.Second, func(ps []struct{ Key string }) bool { return len(ps) == 1 })
	diffKV(t, "on a", kvDump(t, a.addr, "u/"), want)
	diffKV(t, "on b", kvDump(t, b.addr, "u/"), want)
	if code, body := httpGet(t, "http://"+a.addr+"/v1/kv/u/bad%FFkey"); code != 404 {
		t.Errorf("GET the refused key: %d %s", code, body)
	}

	a.stop(syscall.SIGKILL)
	a = startAgent(t, argsA...)
	diffKV(t, "on a after a restart", kvDump(t, a.addr, "u/"), want)
	if code, body := httpGet(t, "http://"+a.addr+"/v1/kv/u/"+url.PathEscape("caf\u00e9-\ufffd-key")+"?raw"); code != 200 || body != "good" {
		t.Errorf("GET the UTF-8 key after a restart: %d %q", code, body)
	}
}

func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestKVImportKeyNotUTF8: pier kv import refuses, before its first write, an
// export whose key is not valid UTF-8 (a raw byte, a lone surrogate, or
// the \ufffd that Go's encoder writes for an invalid byte), naming it.
func TestKVImportKeyNotUTF8(t *testing.T) {
	a := startAgent(t, "-dev", "-node", "kvu", "-data-dir", t.TempDir())
	for _, key := range []string{"\"imp/bad\xffkey\"", `"imp/bad\udc00key"`, `"imp/bad\ud800key"`, `"imp/bad\ufffdkey"`} {
		file := t.TempDir() + "/export.json"
		data := `[{"key":"imp/first","flags":0,"value":"b25l"},{"key":` + key + `,"flags":0,"value":"b25l"}]`
		if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		_, errOut, rc := pier(t, "kv", "import", "-http-addr", a.addr, "@"+file)
		if line := strings.TrimSpace(errOut); rc != 1 || !strings.Contains(line, "entry 1") || !strings.Contains(line, "not valid UTF-8") || strings.Count(line, "\n") > 0 {
			t.Errorf("import of key %q: rc=%d %q", key, rc, line)
		}
		if code, _ := httpGet(t, "http://"+a.addr+"/v1/kv/imp/first"); code != 404 {
			t.Errorf("import of key %q wrote the entry before it: %d", key, code)
		}
	}
	// Escapes of valid characters, U+FFFD itself and a surrogate pair, go in as written.
	data := `[{"key":"imp/ok\u00e9\ud83d\ude00\\u` + "\ufffd" + `","flags":0,"value":"b25l"}]`
	if out, errOut, rc := pier(t, "kv", "import", "-http-addr", a.addr, data); rc != 0 {
		t.Fatalf("import of valid keys: rc=%d %s%s", rc, out, errOut)
	}
	if got := kvDump(t, a.addr, "imp/"); got["imp/ok\u00e9\U0001F600\\u\ufffd"] != "one" || len(got) != 1 {
		t.Errorf("after import: %q", got)
	}
}

// TestFullDiskOtherState: on a full data dir, ACL policies and tokens (kept
// in the KV store), service and check registrations are each refused with
// a 500 naming the cause, and after kill -9 and a restart what was
// acknowledged is there and what was refused is not.
func TestFullDiskOtherState(t *testing.T) { eachFullDisk(t, testFullDiskOtherState) }

func testFullDiskOtherState(t *testing.T, fd fullDisk) {
	dir := mountTmpfs(t, fd.size)
	cfg := t.TempDir() + "/pier.yaml"
	if err := os.WriteFile(cfg, []byte("acl:\n  enabled: true\n  default_policy: deny\n  tokens:\n    initial_management: root-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-node", "fullacl", "-data-dir", dir, "-bind", "127.0.0.1", "-config-file", cfg, "-server", "-bootstrap-expect", "1", "-server-port", "0"}, fd.args(t)...)
	a := startAgent(t, args...)
	c := &http.Client{Timeout: 10 * time.Second}
	do := func(p *proc, method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+p.addr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Consul-Token", "root-secret")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, body := do(a, "PUT", "/v1/acl/policy", `{"Name":"before"}`); code != 200 {
		t.Fatalf("policy on a disk with room: %d %s", code, body)
	}
	if code, body := do(a, "PUT", "/v1/agent/service/register", `{"ID":"before","Name":"before"}`); code != 200 {
		t.Fatalf("service on a disk with room: %d %s", code, body)
	}
	full := false
	for i := 0; i < fd.writes && !full; i++ {
		code, body := do(a, "PUT", fmt.Sprintf("/v1/kv/fill/%03d", i), strings.Repeat("v", 1500))
		switch {
		case code == 500 && strings.Contains(body, "space left on device"):
			full = true
		case code != 200:
			t.Fatalf("PUT fill/%03d: %d %s", i, code, body)
		}
	}
	if !full {
		t.Fatal("the disk never filled (or every refusal was answered 200)")
	}
	// Raft refuses writes while the disk still has room for its own
	// bookkeeping; something else takes that room, as a full disk in
	// production would have it.
	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)
	for _, w := range []struct{ method, path, body string }{
		{"PUT", "/v1/acl/policy", `{"Name":"after"}`},
		{"PUT", "/v1/acl/token", `{"Description":"after","Policies":[{"Name":"before"}]}`},
		{"PUT", "/v1/agent/service/register", `{"ID":"after","Name":"after"}`},
		{"PUT", "/v1/agent/check/register", `{"ID":"after-check","Name":"after-check","TTL":"30s"}`},
	} {
		if code, body := do(a, w.method, w.path, w.body); code != 500 || !strings.Contains(body, "space left on device") {
			t.Errorf("%s %s on a full disk: %d %q, want a 500 naming the cause", w.method, w.path, code, body)
		}
	}
	check := func(p *proc, when string) {
		t.Helper()
		_, body := do(p, "GET", "/v1/acl/policies", "")
		if !strings.Contains(body, `"before"`) || strings.Contains(body, `"after"`) {
			t.Errorf("%s: policies %s, want before and not after", when, body)
		}
		_, body = do(p, "GET", "/v1/acl/tokens", "")
		if strings.Contains(body, `"after"`) {
			t.Errorf("%s: a refused token is listed: %s", when, body)
		}
		_, body = do(p, "GET", "/v1/agent/services", "")
		if !strings.Contains(body, `"before"`) || strings.Contains(body, `"after"`) {
			t.Errorf("%s: services %s, want before and not after", when, body)
		}
		_, body = do(p, "GET", "/v1/agent/checks", "")
		if strings.Contains(body, "after-check") {
			t.Errorf("%s: a refused check is listed: %s", when, body)
		}
	}
	check(a, "before the kill")
	a.stop(syscall.SIGKILL)
	// A server needs room to take a term in an election: the restart comes
	// once the other writer's file is gone.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	b := startAgent(t, args...)
	waitLeader(t, b)
	eventually.True(t, 30*time.Second, "the restarted server shows its ACL policies", func() bool {
		_, body := do(b, "GET", "/v1/acl/policies", "")
		return strings.Contains(body, `"before"`)
	})
	check(b, "after kill -9 and a restart")
}

// fillDisk writes path until the file system is full.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	// fill writes until the disk refuses and answers how much it took.
	fill := func() int {
		n := 0
		for range 1 << 16 { // 256 MiB at most: the tmpfs is far smaller
			if _, err := f.Write(buf); err != nil {
				return n
			}
			n++
		}
		t.Fatal("the disk never filled")
		return n
	}
	fill()
	// The agent may free a little room just after (a WAL segment it could
	// not finish, a temporary file; seen in CI, where a registration then
	// fitted): take that too, until the disk has stayed full for a while.
	for quiet, round := 0, 0; quiet < 3; round++ {
		if round == 50 {
			t.Fatal("the disk keeps getting room back after it was filled")
		}
		time.Sleep(100 * time.Millisecond)
		if fill() == 0 {
			quiet++
		} else {
			quiet = 0
		}
	}
}

// waitLeader waits until p knows its servers' leader (a restarted server
// of one holds an election first).
func waitLeader(t *testing.T, p *proc) {
	t.Helper()
	eventually.True(t, 30*time.Second, "a leader", func() bool {
		code, body := httpGet(t, "http://"+p.addr+"/v1/status/leader")
		return code == 200 && body != `""`
	})
}

// TestRaftFollowerFullDisk: a server whose data dir fills up falls behind
// while the other two acknowledge every write; what it serves of its own
// state (?stale) is only ever what was written; given room and restarted,
// it catches up with every write.
func TestRaftFollowerFullDisk(t *testing.T) {
	eachFullDisk(t, func(t *testing.T, fd fullDisk) {
		// A follower takes what the leader sends until its store fails:
		// the WAL's, once its first segment (of the 1 MiB the tmpfs has
		// room for) is full.
		n := 150
		if fd.backend == "wal" {
			fd.size, n = "1200k", 700
		}
		testRaftFollowerFullDisk(t, fd, n)
	})
}

func testRaftFollowerFullDisk(t *testing.T, fd fullDisk, n int) {
	dirB := mountTmpfs(t, fd.size)
	// a and c form the group, so the leader is one of them; b joins it
	// later as a voter, without -bootstrap-expect.
	pair := []string{"-server", "-bootstrap-expect", "2", "-server-port", "0", "-bind", "127.0.0.1"}
	a := startAgent(t, append(pair, "-node", "mfa", "-data-dir", t.TempDir())...)
	startAgent(t, append(pair, "-node", "mfc", "-data-dir", t.TempDir(), "-join", a.gossip)...)
	waitLeader(t, a)
	// b keeps its server and gossip ports across the restart, as a server
	// on 8300 and 8301 does: on a new gossip port the others would take it
	// only after memberlist's 30 s dead-node reclaim (CI once ran past the
	// wait so).
	port, err := gossip.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	gport, err := gossip.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	argsB := append([]string{"-server", "-server-port", strconv.Itoa(port), "-serf-lan-port", strconv.Itoa(gport), "-bind", "127.0.0.1", "-node", "mfb", "-data-dir", dirB, "-join", a.gossip}, fd.args(t)...)
	b := startAgent(t, argsB...)
	voters := func() int {
		_, body := httpGet(t, "http://"+a.addr+"/v1/status/peers")
		return strings.Count(body, ":")
	}
	eventually.True(t, 30*time.Second, "b is a voter", func() bool { return voters() == 3 })

	c := &http.Client{Timeout: 20 * time.Second}
	want := map[string]string{}
	for i := range n {
		op := kvOp{key: fmt.Sprintf("m/%03d", i), value: value(fmt.Sprintf("m/%03d", i), i, 1500)}
		if err := kvDo(c, a.addr, &op); err != nil || op.code != 200 || op.body != "true" {
			t.Fatalf("PUT %s through a: %v %d %s (two servers of three have room)", op.key, err, op.code, op.body)
		}
		want[op.key] = op.value
	}
	onB := kvDumpQuery(t, b.addr, "m/", "recurse&stale")
	for k, v := range onB {
		if want[k] != v {
			t.Errorf("b serves %s = %.12q..., not what was written", k, v)
		}
	}
	if len(onB) == n {
		t.Errorf("b holds all %d writes: its disk never filled", n)
	}
	t.Logf("b holds %d of %d writes on its full disk", len(onB), n)

	b.stop(syscall.SIGKILL)
	if out, err := exec.Command("mount", "-o", "remount,size=8m", dirB).CombinedOutput(); err != nil {
		t.Fatalf("growing b's tmpfs: %v %s", err, out)
	}
	b = startAgent(t, argsB...)
	restarted := time.Now()
	defer func() { t.Logf("b caught up %v after its restart", time.Since(restarted).Round(time.Millisecond)) }()
	eventually.NoError(t, 60*time.Second, "b catches up", func() error {
		if got := kvDumpQuery(t, b.addr, "m/", "recurse&stale"); len(got) != n {
			return fmt.Errorf("b holds %d of %d keys\n%s", len(got), n, lastLines(b.logs(), 15))
		}
		return nil
	})
	diffKV(t, "b with room again", kvDumpQuery(t, b.addr, "m/", "recurse&stale"), want)
}

// lastLines answers the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// TestRaftLogStoreBackend: a new data dir gets the WAL, one made with
// raft_logstore.backend boltdb keeps raft.db across a kill -9 and a restart
// without the setting, every acknowledged write there; asking for the WAL on
// it stops the agent with one line that names the setting and what the dir
// holds.
func TestRaftLogStoreBackend(t *testing.T) {
	c := &http.Client{Timeout: 10 * time.Second}
	for _, fd := range fullDisks {
		t.Run(fd.backend, func(t *testing.T) {
			dir := t.TempDir()
			base := []string{"-node", "ls", "-data-dir", dir, "-bind", "127.0.0.1", "-server", "-bootstrap-expect", "1", "-server-port", "0"}
			args := base
			if fd.backend == "boltdb" {
				args = append(args, fd.args(t)...)
			} // the WAL: no setting at all, a new data dir's default
			a := startAgent(t, args...)
			var ops []kvOp
			for i := range 50 {
				op := kvOp{key: fmt.Sprintf("ls/%02d", i), value: value(fmt.Sprintf("ls/%02d", i), i, 200)}
				if err := kvDo(c, a.addr, &op); err != nil || op.code != 200 {
					t.Fatalf("PUT %s: %v %d %s", op.key, err, op.code, op.body)
				}
				ops = append(ops, op)
			}
			a.stop(syscall.SIGKILL)
			_, errBolt := os.Stat(filepath.Join(dir, "raft", "raft.db"))
			_, errWAL := os.Stat(filepath.Join(dir, "raft", "wal"))
			if (errBolt == nil) != (fd.backend == "boltdb") || (errWAL == nil) != (fd.backend == "wal") {
				t.Fatalf("%s: raft.db: %v, wal/: %v", fd.backend, errBolt, errWAL)
			}
			b := startAgent(t, base...)
			waitLeader(t, b)
			diffKV(t, "after kill -9 and a restart without the setting", kvDump(t, b.addr, "ls/"), expectedKV(ops))
			b.stop(syscall.SIGTERM)

			other := fullDisk{backend: map[string]string{"wal": "boltdb", "boltdb": "wal"}[fd.backend]}
			_, errOut, rc := pier(t, append(append([]string{"agent", "-http-port", "0", "-serf-lan-port", "0", "-dns-port", "0"}, base...), other.args(t)...)...)
			line := strings.TrimSpace(errOut)
			if rc == 0 || !strings.Contains(line, `raft_logstore.backend is "`+other.backend+`"`) || !strings.Contains(line, "an existing data dir keeps its backend") {
				t.Errorf("backend %s on a %s data dir: rc=%d %q, want an error naming raft_logstore.backend", other.backend, fd.backend, rc, line)
			}
		})
	}
}
