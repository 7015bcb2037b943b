package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/pier-dev/pier/deploy/eventually"
)

// The KV model of registry/raft's linearizability test (a register per
// key; values are unique per write, so a cas by ModifyIndex is a cas by
// the value read with that index), over the HTTP API.
type linIn struct {
	Op            string // get, put, cas
	Key           string
	Value, Expect string
	Mode          string // a get's: "default" or "consistent"
}

type linOut struct {
	Value   string
	Exists  bool
	OK      bool // cas
	Unknown bool // a write whose outcome is not known (timeout, 500)
}

type linReg struct {
	Value  string
	Exists bool
}

var httpLinModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(linIn).Key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return linReg{} },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(linReg), in.(linIn), out.(linOut)
		switch i.Op {
		case "get":
			return o.Exists == s.Exists && o.Value == s.Value, s
		case "put":
			// An unknown put returns at the end of the history: linearized
			// last, it is as if it never happened.
			return true, linReg{Value: i.Value, Exists: true}
		default: // cas
			match := s.Exists && s.Value == i.Expect
			if !o.Unknown && o.OK != match {
				return false, s
			}
			if match {
				return true, linReg{Value: i.Value, Exists: true}
			}
			return true, s
		}
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(linIn), out.(linOut)
		r := fmt.Sprintf("%v %v", o.Exists, o.Value)
		switch {
		case o.Unknown:
			r = "unknown"
		case i.Op == "cas":
			r = strconv.FormatBool(o.OK)
		case i.Op == "put":
			r = "ok"
		}
		return fmt.Sprintf("%s(%s %s %s %s) -> %s", i.Op, i.Mode, i.Key, i.Expect, i.Value, r)
	},
	DescribeState: func(st any) string { s := st.(linReg); return fmt.Sprintf("%v %q", s.Exists, s.Value) },
}

// linHistory records operations with their invoke and return times.
type linHistory struct {
	start   time.Time
	mu      sync.Mutex
	ops     []porcupine.Operation
	pending []porcupine.Operation // unknown outcomes: they return at the end
	counts  map[string]int
}

func (h *linHistory) now() int64 { return int64(time.Since(h.start)) }

func (h *linHistory) add(op porcupine.Operation, kind string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if op.Output.(linOut).Unknown {
		h.pending = append(h.pending, op)
	} else {
		op.Return = h.now()
		h.ops = append(h.ops, op)
	}
	h.counts[kind]++
}

// all answers the history with every unknown outcome returning after
// everything else.
func (h *linHistory) all() []porcupine.Operation {
	h.mu.Lock()
	defer h.mu.Unlock()
	end := h.now() + 1
	out := append([]porcupine.Operation{}, h.ops...)
	for _, op := range h.pending {
		op.Return = end
		out = append(out, op)
	}
	return out
}

// isDial reports an error before the request was sent: nothing happened.
func isDial(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// kvEntry is the part of a GET /v1/kv/<key> answer the clients use.
type kvEntry struct {
	Value       []byte
	ModifyIndex uint64
}

// linClient runs reads, puts and cases on keys through the agent at
// api() until stop, recording them in h.
func linClient(h *linHistory, id int, api func() string, keys []string, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	hc := &http.Client{Timeout: 10 * time.Second}
	seen := map[string]kvEntry{}
	seq := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		key := keys[rng.IntN(len(keys))]
		base := "http://" + api() + "/v1/kv/lin/" + key
		call := h.now()
		switch r := rng.IntN(10); {
		case r < 4: // read, default or ?consistent
			mode, q := "default", ""
			if r%2 == 1 {
				mode, q = "consistent", "?consistent"
			}
			resp, err := hc.Get(base + q)
			if err != nil {
				time.Sleep(50 * time.Millisecond) // a read that answered nothing has no effect
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			out := linOut{}
			switch resp.StatusCode {
			case 200:
				var es []kvEntry
				if err := json.Unmarshal(body, &es); err != nil || len(es) != 1 {
					continue
				}
				out.Exists, out.Value = true, string(es[0].Value)
				seen[key] = es[0]
			case 404:
			default:
				time.Sleep(50 * time.Millisecond)
				continue
			}
			h.add(porcupine.Operation{ClientId: id, Input: linIn{Op: "get", Key: key, Mode: mode}, Call: call, Output: out}, "get-"+mode)
		default: // put, or a cas against the last read
			seq++
			v := fmt.Sprintf("c%d-%d", id, seq)
			in := linIn{Op: "put", Key: key, Value: v}
			u := base
			if e, ok := seen[key]; ok && r >= 7 {
				in = linIn{Op: "cas", Key: key, Value: v, Expect: string(e.Value)}
				u += "?cas=" + strconv.FormatUint(e.ModifyIndex, 10)
			}
			req, _ := http.NewRequest("PUT", u, strings.NewReader(v))
			resp, err := hc.Do(req)
			if err != nil {
				if isDial(err) {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: linOut{Unknown: true}}, "unknown")
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answer := strings.TrimSpace(string(body))
			switch {
			case resp.StatusCode == 200 && (answer == "true" || answer == "false"):
				if in.Op == "put" && answer != "true" {
					h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: linOut{Unknown: true}}, "put-false")
					continue
				}
				h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: linOut{OK: answer == "true"}}, in.Op)
			default:
				h.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: linOut{Unknown: true}}, "unknown")
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
}

// checkLinearizable fails t when history is not linearizable, with the
// visualization written to a file.
func checkLinearizable(t *testing.T, what string, history []porcupine.Operation) {
	t.Helper()
	res, info := porcupine.CheckOperationsVerbose(httpLinModel, history, 90*time.Second)
	switch res {
	case porcupine.Ok:
		t.Logf("%s: %d operations, linearizable", what, len(history))
	case porcupine.Unknown:
		t.Errorf("%s: the checker timed out on %d operations", what, len(history))
	default:
		path := filepath.Join(t.TempDir(), "linearizability.html")
		if err := porcupine.VisualizePath(httpLinModel, info, path); err != nil {
			t.Logf("visualization: %v", err)
		}
		t.Errorf("%s: the history of %d operations is NOT linearizable; see %s", what, len(history), path)
		if os.Getenv("PIER_KEEP_VIS") != "" {
			b, _ := os.ReadFile(path)
			os.WriteFile(os.Getenv("PIER_KEEP_VIS"), b, 0o644)
		}
	}
}

// TestRaftLinearizableUnderFaults: five clients read (default and
// ?consistent), put and cas three keys through the five agents of a
// cluster of three servers and two clients while the test kills the
// leader and starts it again, pauses the leader, and cuts a server off the
// network. The history must be linearizable; the cut-off server must
// accept no write and answer no default or ?consistent read; once healed,
// every server holds the same state.
func TestRaftLinearizableUnderFaults(t *testing.T) {
	c := newFaultCluster(t, 3, 2, true)
	h := &linHistory{start: time.Now(), counts: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, m := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			linClient(h, i, func() string { return c.api(m) }, []string{"a", "b", "c"}, stop)
		}()
	}
	stopped := false
	stopClients := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopClients()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(h.start).Seconds(), what) }

	time.Sleep(3 * time.Second)
	// 1. SIGKILL the leader, start it again on its data dir.
	l := c.waitLeader()
	phase("SIGKILL leader " + l.name)
	c.kill(l)
	time.Sleep(3 * time.Second)
	c.start(l)
	phase("restarted " + l.name)
	time.Sleep(3 * time.Second)

	// 2. SIGSTOP the leader for longer than an election, then SIGCONT.
	l = c.waitLeader()
	phase("SIGSTOP leader " + l.name)
	c.pause(l, true)
	time.Sleep(5 * time.Second)
	c.pause(l, false)
	phase("SIGCONT " + l.name)
	time.Sleep(3 * time.Second)

	// 3. Cut the leader off; the other two elect one of them.
	l = c.waitLeader()
	phase("cut off leader " + l.name)
	c.cut(l, true)
	healed := false
	defer func() {
		if !healed {
			c.cut(nil, false)
		}
	}()
	nl := c.waitLeader(l)
	phase("majority's leader " + nl.name)
	minorityRefuses(t, c, l)
	time.Sleep(2 * time.Second)
	c.cut(nil, false)
	healed = true
	phase("healed")
	time.Sleep(4 * time.Second)
	stopClients()
	phase("clients stopped")

	t.Logf("operations: %v", h.counts)
	if h.counts["get-default"] == 0 || h.counts["get-consistent"] == 0 || h.counts["put"] == 0 || h.counts["cas"] == 0 {
		t.Errorf("too little happened to check: %v", h.counts)
	}
	all := h.all()
	checkLinearizable(t, "all reads and writes", all)

	// Every server holds the same state once healed.
	c.waitLeader()
	eventually.NoError(t, 30*time.Second, "every server holds the same KV", func() error {
		var first map[string]string
		for _, s := range c.servers() {
			got, err := staleDump(c.api(s), "lin/")
			if err != nil {
				return fmt.Errorf("%s: %v", s.name, err)
			}
			if first == nil {
				first = got
			} else if fmt.Sprint(got) != fmt.Sprint(first) {
				return fmt.Errorf("%s holds %v, %s %v", s.name, got, c.servers()[0].name, first)
			}
		}
		if _, ok := first["lin/minority"]; ok {
			t.Errorf("the write sent to the cut-off server was applied: %v", first)
		}
		return nil
	})
}

// The checker itself, on the model above: a stale read fails it, and so
// does a cas that says it failed when it could not have.
func TestHTTPLinModelCatchesStaleRead(t *testing.T) {
	h := []porcupine.Operation{
		{Input: linIn{Op: "put", Key: "a", Value: "1"}, Call: 0, Output: linOut{}, Return: 10},
		{Input: linIn{Op: "put", Key: "a", Value: "2"}, Call: 20, Output: linOut{}, Return: 30},
		{Input: linIn{Op: "get", Key: "a"}, Call: 40, Output: linOut{Value: "1", Exists: true}, Return: 50},
	}
	if porcupine.CheckOperations(httpLinModel, h) {
		t.Fatal("a read of an overwritten value passed")
	}
	h[2].Output = linOut{Value: "2", Exists: true}
	if !porcupine.CheckOperations(httpLinModel, h) {
		t.Fatal("a correct history failed")
	}
	// An unknown put returning at the end may or may not have happened.
	unknown := porcupine.Operation{Input: linIn{Op: "put", Key: "a", Value: "3"}, Call: 35, Output: linOut{Unknown: true}, Return: 1000}
	if !porcupine.CheckOperations(httpLinModel, append(h, unknown)) {
		t.Fatal("an unknown put that was not applied failed the history")
	}
	seen3 := porcupine.Operation{Input: linIn{Op: "get", Key: "a"}, Call: 60, Output: linOut{Value: "3", Exists: true}, Return: 70}
	if !porcupine.CheckOperations(httpLinModel, append(h, unknown, seen3)) {
		t.Fatal("an unknown put that was applied failed the history")
	}
	h = append(h, porcupine.Operation{Input: linIn{Op: "cas", Key: "a", Value: "4", Expect: "2"}, Call: 60, Output: linOut{OK: false}, Return: 70})
	if porcupine.CheckOperations(httpLinModel, h) {
		t.Fatal("a wrongly failed cas passed")
	}
}

// minorityRefuses asks the cut-off server m directly for a write, a
// default and a ?consistent read: each must be refused (500) or time out,
// never answered 200.
func minorityRefuses(t *testing.T, c *faultCluster, m *member) {
	t.Helper()
	hc := &http.Client{Timeout: 15 * time.Second}
	base := "http://" + c.api(m) + "/v1/kv/lin/minority"
	type req struct{ method, url string }
	var wg sync.WaitGroup
	for _, r := range []req{{"PUT", base}, {"GET", base}, {"GET", base + "?consistent"}, {"PUT", base + "?cas=0"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rq, _ := http.NewRequest(r.method, r.url, strings.NewReader("from-the-minority"))
			start := time.Now()
			resp, err := hc.Do(rq)
			if err != nil {
				t.Logf("cut-off %s: %s %s: no answer in %v (%v)", m.name, r.method, r.url, time.Since(start).Round(time.Millisecond), err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Logf("cut-off %s: %s %s: %d %q in %v", m.name, r.method, r.url, resp.StatusCode, strings.TrimSpace(string(body)), time.Since(start).Round(time.Millisecond))
			if resp.StatusCode == 200 || resp.StatusCode == 404 {
				t.Errorf("the cut-off server %s answered %s %s: %d %s", m.name, r.method, r.url, resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
}

// staleDump answers what the server at api holds under prefix (?stale).
func staleDump(api, prefix string) (map[string]string, error) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get("http://" + api + "/v1/kv/" + prefix + "?recurse&stale")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]string{}
	if resp.StatusCode == 404 {
		return out, nil
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("status %d", resp.StatusCode)
	}
	body, _ := io.ReadAll(resp.Body)
	var es []struct {
		Key   string
		Value []byte
	}
	if err := json.Unmarshal(body, &es); err != nil {
		return nil, err
	}
	for _, e := range es {
		out[e.Key] = string(e.Value)
	}
	return out, nil
}

// TestRaftFailoverTime measures, for a group of three servers (and of five
// when PIER_FAILOVER_RUNS is set, that many runs each), the time from the
// leader's SIGKILL to the first write acknowledged through a client agent.
// The bound is loose: the machine is shared.
func TestRaftFailoverTime(t *testing.T) {
	runs, sizes := 1, []int{3}
	if v := os.Getenv("PIER_FAILOVER_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PIER_FAILOVER_RUNS=%q: want a number of runs", v)
		}
		runs, sizes = n, []int{3, 5}
	}
	for _, size := range sizes {
		t.Run(fmt.Sprintf("%d-servers", size), func(t *testing.T) {
			c := newFaultCluster(t, size, 1, false)
			client := c.nodes[size]
			hc := &http.Client{Timeout: 3 * time.Second}
			put := func(v string) bool {
				resp, err := hc.Do(mustReq("PUT", "http://"+c.api(client)+"/v1/kv/failover", v))
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode == 200 && strings.TrimSpace(string(b)) == "true"
			}
			var times []time.Duration
			for run := range runs {
				l := c.waitLeader()
				eventually.True(t, 30*time.Second, "a write before the kill", func() bool { return put("before") })
				killed := time.Now()
				c.kill(l)
				for !put(fmt.Sprintf("after-%d", run)) {
					if time.Since(killed) > 30*time.Second {
						t.Fatalf("no write acknowledged within 30s of the leader's SIGKILL")
					}
					time.Sleep(10 * time.Millisecond)
				}
				d := time.Since(killed)
				times = append(times, d)
				t.Logf("%d servers, run %d: leader %s killed; first write acknowledged after %v", size, run+1, l.name, d.Round(time.Millisecond))
				c.start(l)
			}
			t.Logf("%d servers: failover times %v", size, times)
		})
	}
}

func mustReq(method, url, body string) *http.Request {
	r, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		panic(err)
	}
	return r
}
