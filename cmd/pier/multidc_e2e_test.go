package main

import (
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// datacenter is one datacenter of real agents on loopback: a server (a
// Raft group of one, in the WAN pool) and clients that join it.
type datacenter struct {
	name    string
	server  *proc
	clients []*proc
}

// startDatacenter starts dc's server, which joins the WAN pool through
// wanJoin (none: it starts the pool), and its clients; extra are more
// flags for every agent of dc.
func startDatacenter(t testing.TB, dc string, clients int, wanJoin string, extra ...string) *datacenter {
	t.Helper()
	d := &datacenter{name: dc}
	args := []string{"-datacenter", dc, "-node", "s-" + dc, "-bind", "127.0.0.1", "-data-dir", tempDataDir(t),
		"-server", "-bootstrap-expect", "1", "-server-port", "0"}
	if wanJoin != "" {
		args = append(args, "-retry-join-wan", wanJoin)
	}
	d.server = startAgent(t, append(args, extra...)...)
	for i := range clients {
		c := startAgent(t, append([]string{"-datacenter", dc, "-node", "c" + string(rune('1'+i)) + "-" + dc, "-bind", "127.0.0.1", "-data-dir", tempDataDir(t),
			"-retry-join", d.server.gossip, "-retry-interval", "1s"}, extra...)...)
		d.clients = append(d.clients, c)
	}
	return d
}

func tempDataDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "multidc-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func apiClient(t *testing.T, addr string) *consul.Client {
	t.Helper()
	c, err := consul.NewClient(&consul.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func datacentersOf(c *consul.Client) []string {
	dcs, err := c.Catalog().Datacenters()
	if err != nil {
		return nil
	}
	return dcs
}

// TestWANTwoDatacenters: two datacenters meet through their servers' WAN
// pool; a client of dc1 reads and writes dc2 through the consul/api client
// with QueryOptions{Datacenter}, blocking queries included, and a third
// datacenter joins (pier join -wan) and leaves.
func TestWANTwoDatacenters(t *testing.T) {
	needBinary(t)
	dc1 := startDatacenter(t, "dc1", 1, "")
	dc2 := startDatacenter(t, "dc2", 1, dc1.server.wan)
	c1 := apiClient(t, dc1.clients[0].addr)
	eventually.True(t, 20*time.Second, "dc1's client lists both datacenters", func() bool {
		return slices.Equal(datacentersOf(c1), []string{"dc1", "dc2"})
	})
	eventually.True(t, 20*time.Second, "dc2's client lists its own first", func() bool {
		return slices.Equal(datacentersOf(apiClient(t, dc2.clients[0].addr)), []string{"dc2", "dc1"})
	})
	out, _, code := pier(t, "members", "-wan", "-http-addr", dc1.server.addr)
	if code != 0 || !strings.Contains(out, "s-dc1.dc1") || !strings.Contains(out, "s-dc2.dc2") || strings.Count(out, "alive") != 2 {
		t.Fatalf("pier members -wan (%d):\n%s", code, out)
	}
	if ms, err := c1.Agent().Members(true); err != nil || len(ms) != 0 {
		t.Errorf("WAN members from a client: %v, %v; want none, as Consul", ms, err)
	}

	// dc2 has a service and a key; dc1's client reads them with ?dc=dc2.
	c2 := apiClient(t, dc2.clients[0].addr)
	if err := c2.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "redis1", Name: "redis", Port: 6379, Address: "10.2.0.1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.KV().Put(&consul.KVPair{Key: "where", Value: []byte("dc2")}, nil); err != nil {
		t.Fatal(err)
	}
	q := &consul.QueryOptions{Datacenter: "dc2"}
	var idx uint64
	eventually.True(t, 20*time.Second, "dc1's client sees dc2's redis", func() bool {
		es, meta, err := c1.Health().Service("redis", "", true, q)
		if err != nil || len(es) != 1 || es[0].Node.Datacenter != "dc2" || es[0].Service.Address != "10.2.0.1" {
			return false
		}
		idx = meta.LastIndex
		return true
	})
	if es, _, err := c1.Health().Service("redis", "", true, nil); err != nil || len(es) != 0 {
		t.Errorf("redis in dc1: %v, %v; want none", es, err)
	}
	kv, _, err := c1.KV().Get("where", q)
	if err != nil || kv == nil || string(kv.Value) != "dc2" {
		t.Fatalf("KV of dc2 through dc1: %+v, %v", kv, err)
	}
	if kv, _, _ := c1.KV().Get("where", nil); kv != nil {
		t.Errorf("dc1 has dc2's key: %+v", kv)
	}
	nodes, _, err := c1.Catalog().Nodes(q)
	if err != nil || len(nodes) != 2 {
		t.Errorf("nodes of dc2: %v, %v", nodes, err)
	}
	// Writes: a key, a session and a transaction land in dc2.
	wq := &consul.WriteOptions{Datacenter: "dc2"}
	if _, err := c1.KV().Put(&consul.KVPair{Key: "from", Value: []byte("dc1")}, wq); err != nil {
		t.Fatal(err)
	}
	if kv, _, _ := c2.KV().Get("from", nil); kv == nil || string(kv.Value) != "dc1" {
		t.Errorf("dc2 lacks the key written from dc1: %+v", kv)
	}
	// A session's default node is the agent's own, which dc2 does not
	// have (Consul answers the same): it names one of dc2's.
	if _, _, err := c1.Session().Create(&consul.SessionEntry{Name: "x"}, wq); err == nil || !strings.Contains(err.Error(), "Missing node registration") {
		t.Errorf("a session in dc2 on dc1's node: %v, want Missing node registration", err)
	}
	sid, _, err := c1.Session().Create(&consul.SessionEntry{Name: "x", Node: "c1-dc2", Checks: []string{}}, wq)
	if err != nil {
		t.Fatal(err)
	}
	if s, _, err := c2.Session().Info(sid, nil); err != nil || s == nil {
		t.Errorf("dc2 lacks the session made from dc1: %v, %v", s, err)
	}
	ok, _, _, err := c1.Txn().Txn(consul.TxnOps{{KV: &consul.KVTxnOp{Verb: consul.KVSet, Key: "txn", Value: []byte("1")}}}, q)
	if err != nil || !ok {
		t.Errorf("txn in dc2: %v, %v", ok, err)
	}
	if kv, _, _ := c2.KV().Get("txn", nil); kv == nil {
		t.Error("dc2 lacks the txn's key")
	}

	// A blocking query on dc2 wakes when dc2 changes.
	woke := make(chan error, 1)
	go func() {
		bq := &consul.QueryOptions{Datacenter: "dc2", WaitIndex: idx, WaitTime: 30 * time.Second}
		es, _, err := c1.Health().Service("redis", "", true, bq)
		if err == nil && len(es) != 2 {
			err = errNotTwo
		}
		woke <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the query block first (either order passes)
	start := time.Now()
	if err := c2.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "redis2", Name: "redis", Port: 6380, Address: "10.2.0.2"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Errorf("blocking query on dc2: %v", err)
		}
		t.Logf("a blocking query across datacenters woke %v after the registration", time.Since(start))
	case <-time.After(20 * time.Second):
		t.Fatal("a blocking query on dc2 did not wake on dc2's change")
	}

	// DNS: dc2's names through dc1's client.
	if _, err := exec.LookPath("dig"); err == nil {
		dnsAddr := dc1.clients[0].dns
		if out := digAt(t, dnsAddr, "redis.service.dc2.consul", "+short"); !strings.Contains(out, "10.2.0.1") || !strings.Contains(out, "10.2.0.2") {
			t.Errorf("dig redis.service.dc2.consul:\n%s", out)
		}
		if out := digAt(t, dnsAddr, "c1-dc2.node.dc2.consul", "+short"); strings.TrimSpace(out) != "127.0.0.1" {
			t.Errorf("dig c1-dc2.node.dc2.consul:\n%s", out)
		}
		out := digAt(t, dnsAddr, "_redis._tcp.service.dc2.consul", "SRV")
		if !strings.Contains(out, "6379 0a020001.addr.dc2.consul.") || !strings.Contains(out, "IN\tA\t10.2.0.1") {
			t.Errorf("dig SRV _redis._tcp.service.dc2.consul:\n%s", out)
		}
		if out := digAt(t, dnsAddr, "redis.service.dc1.consul"); !strings.Contains(out, "NXDOMAIN") {
			t.Errorf("redis in dc1: want NXDOMAIN\n%s", out)
		}
		if out := digAt(t, dnsAddr, "redis.service.dc9.consul"); !strings.Contains(out, "NXDOMAIN") {
			t.Errorf("a datacenter nobody knows: want NXDOMAIN\n%s", out)
		}
	}

	// A datacenter nobody knows answers as Consul.
	code, body := get(t, "http://"+dc1.clients[0].addr+"/v1/health/service/redis?dc=dc9")
	if code != http.StatusInternalServerError || !strings.Contains(body, "No path to datacenter") {
		t.Errorf("?dc=dc9: %d %s", code, body)
	}

	// A third datacenter joins with pier join -wan, then leaves.
	dc3 := startDatacenter(t, "dc3", 0, "")
	if out, errOut, code := pier(t, "join", "-wan", "-http-addr", dc3.server.addr, dc1.server.wan); code != 0 {
		t.Fatalf("pier join -wan: %d %s %s", code, out, errOut)
	}
	eventually.True(t, 20*time.Second, "every datacenter lists three", func() bool {
		return len(datacentersOf(c1)) == 3 && len(datacentersOf(c2)) == 3
	})
	if _, _, code := pier(t, "leave", "-http-addr", dc3.server.addr); code != 0 {
		t.Fatal("pier leave on dc3's server")
	}
	eventually.True(t, 20*time.Second, "dc3 left the WAN pool", func() bool {
		out, _, _ := pier(t, "members", "-wan", "-http-addr", dc1.server.addr)
		return strings.Contains(out, "s-dc3.dc3") && strings.Contains(out, "left")
	})
	if got := datacentersOf(c1); !slices.Equal(got, []string{"dc1", "dc2"}) {
		t.Errorf("datacenters after dc3 left: %v", got)
	}
	code, body = get(t, "http://"+dc1.clients[0].addr+"/v1/catalog/nodes?dc=dc3")
	if code != http.StatusInternalServerError || !strings.Contains(body, "No path to datacenter") {
		t.Errorf("?dc=dc3 after it left: %d %s", code, body)
	}
}

var errNotTwo = errors.New("want two instances")

// get answers a GET's status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPreparedQueryFailover: a prepared query of dc1 with Failover
// {NearestN: 1} answers dc1's instances over HTTP and DNS
// (web-q.query.consul), dc2's once dc1 has none healthy, dc3's (listed in
// Datacenters) once dc2 has none either, and dc1's again when one is back.
func TestPreparedQueryFailover(t *testing.T) {
	needBinary(t)
	dc1 := startDatacenter(t, "dc1", 1, "")
	dc2 := startDatacenter(t, "dc2", 1, dc1.server.wan)
	c1, c2 := apiClient(t, dc1.clients[0].addr), apiClient(t, dc2.clients[0].addr)
	eventually.True(t, 20*time.Second, "the datacenters meet", func() bool { return len(datacentersOf(c1)) == 2 })
	web := func(c *consul.Client, addr string) {
		t.Helper()
		if err := c.Agent().ServiceRegister(&consul.AgentServiceRegistration{ID: "web", Name: "web", Port: 80, Address: addr,
			Check: &consul.AgentServiceCheck{CheckID: "web-ttl", TTL: "1h", Status: "passing"}}); err != nil {
			t.Fatal(err)
		}
	}
	web(c1, "10.1.0.1")
	web(c2, "10.2.0.1")
	var id string
	eventually.True(t, 20*time.Second, "dc1 takes a prepared query", func() bool {
		var err error
		id, _, err = c1.PreparedQuery().Create(&consul.PreparedQueryDefinition{Name: "web-q",
			Service: consul.ServiceQuery{Service: "web", OnlyPassing: true, Failover: consul.QueryFailoverOptions{NearestN: 1}}}, nil)
		return err == nil
	})
	from := func() (string, int) {
		res, _, err := c1.PreparedQuery().Execute("web-q", nil)
		if err != nil || len(res.Nodes) == 0 {
			return "", 0
		}
		return res.Datacenter + " " + res.Nodes[0].Service.Address, res.Failovers
	}
	digAnswer := func() string {
		if _, err := exec.LookPath("dig"); err != nil {
			return ""
		}
		return strings.TrimSpace(digAt(t, dc1.clients[0].dns, "web-q.query.consul", "+short"))
	}
	eventually.True(t, 20*time.Second, "the query answers dc1's web", func() bool { got, _ := from(); return got == "dc1 10.1.0.1" })
	if got := digAnswer(); got != "" && got != "10.1.0.1" {
		t.Errorf("dig web-q.query.consul with dc1 healthy: %q", got)
	}
	// dc1's only instance fails: the answer moves to dc2.
	if err := c1.Agent().UpdateTTL("web-ttl", "down", "fail"); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 20*time.Second, "the query fails over to dc2", func() bool { got, _ := from(); return got == "dc2 10.2.0.1" })
	if _, n := from(); n != 1 {
		t.Errorf("failovers: %d, want 1", n)
	}
	if _, err := exec.LookPath("dig"); err == nil {
		if got := digAnswer(); got != "10.2.0.1" {
			t.Errorf("dig web-q.query.consul with dc1 down: %q, want dc2's 10.2.0.1", got)
		}
		if got := digAt(t, dc1.clients[0].dns, "web-q.query.consul", "SRV"); !strings.Contains(got, ".addr.dc2.consul.") {
			t.Errorf("SRV of the failed-over query names dc2's hosts:\n%s", got)
		}
		if got := digAt(t, dc1.clients[0].dns, "nope.query.consul"); !strings.Contains(got, "NXDOMAIN") {
			t.Errorf("an unknown query: want NXDOMAIN\n%s", got)
		}
		// name.query.dc2.consul runs dc2's query in dc2, as Consul.
		if _, _, err := c2.PreparedQuery().Create(&consul.PreparedQueryDefinition{Name: "web-dc2", Service: consul.ServiceQuery{Service: "web"}}, nil); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(digAt(t, dc1.clients[0].dns, "web-dc2.query.dc2.consul", "+short")); got != "10.2.0.1" {
			t.Errorf("dig web-dc2.query.dc2.consul: %q, want dc2's 10.2.0.1", got)
		}
		if got := digAt(t, dc1.clients[0].dns, "web-dc2.query.dc2.consul", "SRV"); !strings.Contains(got, ".addr.dc2.consul.") {
			t.Errorf("SRV of dc2's query names dc2's hosts:\n%s", got)
		}
		for _, name := range []string{"web-dc2.query.consul", "web-q.query.dc2.consul", "web-dc2.query.dc9.consul"} {
			if got := digAt(t, dc1.clients[0].dns, name); !strings.Contains(got, "NXDOMAIN") {
				t.Errorf("%s: want NXDOMAIN\n%s", name, got)
			}
		}
		if got := strings.TrimSpace(digAt(t, dc1.clients[0].dns, "web-q.query.dc1.consul", "+short")); got != "10.2.0.1" {
			t.Errorf("dig web-q.query.dc1.consul (this datacenter named): %q, want the failover's 10.2.0.1", got)
		}
	}
	// A third datacenter, listed in Datacenters: with dc2's instance down
	// too, the answer comes from dc3 after two failovers.
	dc3 := startDatacenter(t, "dc3", 1, dc1.server.wan)
	web(apiClient(t, dc3.clients[0].addr), "10.3.0.1")
	def := &consul.PreparedQueryDefinition{ID: id, Name: "web-q", Service: consul.ServiceQuery{Service: "web", OnlyPassing: true,
		Failover: consul.QueryFailoverOptions{NearestN: 1, Datacenters: []string{"dc9", "dc3"}}}}
	if _, err := c1.PreparedQuery().Update(def, nil); err != nil {
		t.Fatal(err)
	}
	if err := c2.Agent().UpdateTTL("web-ttl", "down", "fail"); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 30*time.Second, "the query fails over past dc2 to dc3", func() bool { got, _ := from(); return got == "dc3 10.3.0.1" })
	// Loopback gives no distances: the nearest other is dc2 (then dc3 is
	// the second try) or dc3 (the first); dc9 is unknown and never counts.
	if _, n := from(); n != 1 && n != 2 {
		t.Errorf("failovers with dc2 down: %d, want 1 or 2", n)
	}
	if got := digAnswer(); got != "" && got != "10.3.0.1" {
		t.Errorf("dig web-q.query.consul with dc1 and dc2 down: %q", got)
	}
	// Back in dc1 as soon as its instance passes again.
	if err := c1.Agent().UpdateTTL("web-ttl", "up", "pass"); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, 20*time.Second, "the query comes back to dc1", func() bool { got, _ := from(); return got == "dc1 10.1.0.1" })
	if _, err := c1.PreparedQuery().Delete(id, nil); err != nil {
		t.Fatal(err)
	}
}

// TestWANEncrypted: with -encrypt, the WAN pool is encrypted with the
// gossip key and the server port authenticates with identities derived
// from it; datacenters with the same key meet and ?dc= crosses, one with
// another key stays out.
func TestWANEncrypted(t *testing.T) {
	needBinary(t)
	key, other := "aGVsbG8td2FuLWtleS0xMjM0NTY3ODkwYWJjZGVmMDE=", "b3RoZXIta2V5LWZvci10aGUtd2FuLXBvb2wtMTIzNDU="
	dc1 := startDatacenter(t, "dc1", 1, "", "-encrypt", key)
	dc2 := startDatacenter(t, "dc2", 1, dc1.server.wan, "-encrypt", key)
	startDatacenter(t, "dc3", 0, dc1.server.wan, "-encrypt", other) // tries to join, and cannot
	c1 := apiClient(t, dc1.clients[0].addr)
	eventually.True(t, 20*time.Second, "dc2 writes through its server", func() bool {
		_, err := apiClient(t, dc2.clients[0].addr).KV().Put(&consul.KVPair{Key: "k", Value: []byte("v")}, nil)
		return err == nil
	})
	eventually.True(t, 20*time.Second, "dc1 reads dc2's key over the encrypted WAN", func() bool {
		kv, _, err := c1.KV().Get("k", &consul.QueryOptions{Datacenter: "dc2"})
		return err == nil && kv != nil && string(kv.Value) == "v"
	})
	if got := datacentersOf(c1); !slices.Equal(got, []string{"dc1", "dc2"}) {
		t.Errorf("datacenters with dc3 on another key: %v", got)
	}

	// A rotation through dc1's client rotates dc2 too, the WAN pool with
	// them: as Consul, a key operation goes to every datacenter.
	k2 := "bmV3LWtleS1mb3ItZXZlcnktZGF0YWNlbnRlci0xMjM="
	for _, step := range [][]string{{"-install", k2}, {"-use", k2}, {"-remove", key}} {
		out, errOut, rc := pier(t, append([]string{"keyring", "-http-addr", dc1.clients[0].addr}, step...)...)
		if rc != 0 || !strings.Contains(out, "Success!") {
			t.Fatalf("pier keyring %v: %d %s%s", step, rc, out, errOut)
		}
	}
	// A datacenter that knows the new key only joins the WAN pool.
	startDatacenter(t, "dc4", 0, dc1.server.wan, "-encrypt", k2)
	c2 := apiClient(t, dc2.clients[0].addr)
	eventually.True(t, 20*time.Second, "dc4, on the new key only, joins the WAN pool", func() bool {
		return slices.Contains(datacentersOf(c1), "dc4") && slices.Contains(datacentersOf(c2), "dc4")
	})
	// The list answers per pool, Consul's shape: the WAN pool, then each
	// datacenter's LAN pool, the one asked first.
	rs, err := c2.Operator().KeyringList(nil)
	if err != nil {
		t.Fatal(err)
	}
	var pools []string
	for _, r := range rs {
		pool := r.Datacenter + " LAN"
		if r.WAN {
			pool = r.Datacenter + " WAN"
		}
		pools = append(pools, pool)
		want := map[string]int{"dc2 WAN": 3, "dc1 LAN": 2, "dc2 LAN": 2, "dc4 LAN": 1}[pool]
		if r.NumNodes != want || len(r.Keys) != 1 || r.Keys[k2] != want || r.PrimaryKeys[k2] != want {
			t.Errorf("%s after the rotation: %+v, want %d nodes on %s only", pool, r, want, k2)
		}
	}
	if len(pools) != 4 || pools[0] != "dc2 WAN" || pools[1] != "dc2 LAN" {
		t.Errorf("pools listed: %v, want dc2 WAN, dc2 LAN, then dc1's and dc4's", pools)
	}
	out, errOut, rc := pier(t, "keyring", "-list", "-local-only", "-http-addr", dc1.server.addr)
	if rc != 0 || out != "dc1 (LAN):\n  "+k2+" [2/2] (primary on 2)\n" {
		t.Errorf("pier keyring -list -local-only: %d %q %s", rc, out, errOut)
	}
	if _, errOut, rc := pier(t, "keyring", "-use", k2, "-local-only", "-http-addr", dc1.server.addr); rc != 2 || !strings.Contains(errOut, "-local-only") {
		t.Errorf("-local-only with -use: %d %s", rc, errOut)
	}
	if code, body := apiDo(t, "PUT", "http://"+dc1.server.addr+"/v1/operator/keyring?local-only=true", "", `{"Key":"`+k2+`"}`); code != 400 || !strings.Contains(body, "local-only") {
		t.Errorf("?local-only on a PUT: %d %s", code, body)
	}
	// The WAN keeps carrying ?dc= on the new key, new connections included.
	eventually.True(t, 20*time.Second, "dc1 reads dc4 after the rotation", func() bool {
		_, _, err := c1.KV().Get("k", &consul.QueryOptions{Datacenter: "dc4"})
		return err == nil
	})
	if kv, _, err := c1.KV().Get("k", &consul.QueryOptions{Datacenter: "dc2"}); err != nil || kv == nil {
		t.Errorf("dc1 reads dc2 after the rotation: %v %v", kv, err)
	}
}
