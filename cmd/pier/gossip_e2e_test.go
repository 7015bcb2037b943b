package main

import (
	"bufio"
	"bytes"
	"compress/lzw"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// members is /v1/agent/members of an agent: name and status of each.
func members(t *testing.T, p *proc) []struct {
	Name   string
	Addr   string
	Status int
} {
	t.Helper()
	var ms []struct {
		Name   string
		Addr   string
		Status int
	}
	_, body := curl(t, "http://"+p.addr+"/v1/agent/members")
	if err := json.Unmarshal([]byte(body), &ms); err != nil {
		t.Fatalf("members of %s: %v in %s", p.addr, err, body)
	}
	return ms
}

// metric reads one sample of an agent's /metrics (0 if absent).
func metric(t *testing.T, p *proc, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// forgedAlives are alive messages no real member sends, each one UDP
// datagram to a gossip port without -encrypt: the 15 bytes of issue 24
// (no name, no address, no protocol versions), and the same with protocol
// versions, then with a name but no address, the unspecified address, and
// a name with a space. (Memberlist takes port 0 for its own port.)
var forgedAlives = [][]byte{
	[]byte("\x04\x81\xabIncarnation\x01"),
	alive("", nil, 0),
	alive("ghost", nil, 0),
	alive("ghost2", []byte{0, 0, 0, 0}, 8301),
	alive("ghost 3", []byte{127, 0, 0, 9}, 8301),
}

// alive encodes memberlist's alive message (type 4, msgpack map).
func alive(name string, addr []byte, port uint16) []byte {
	str := func(s string) []byte { return append([]byte{0xa0 | byte(len(s))}, s...) }
	b := []byte{4, 0x86}
	b = append(append(b, str("Incarnation")...), 1)
	b = append(append(b, str("Node")...), str(name)...)
	b = append(b, str("Addr")...)
	if addr == nil {
		b = append(b, 0xc0)
	} else {
		b = append(append(b, 0xc4, byte(len(addr))), addr...)
	}
	b = append(append(b, str("Port")...), 0xcd, byte(port>>8), byte(port))
	b = append(append(b, str("Meta")...), 0xc0)
	b = append(append(b, str("Vsn")...), 0xc4, 6, 1, 5, 5, 2, 5, 5)
	return b
}

// TestForgedAliveDatagram: datagrams announcing members without a usable
// name or address, sent to every agent of a three-node cluster, add nobody
// to any member list or catalog.
func TestForgedAliveDatagram(t *testing.T) {
	a := startAgent(t, "-node", "fa", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	b := startAgent(t, "-node", "fb", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	c := startAgent(t, "-node", "fc", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	all := []*proc{a, b, c}
	for _, p := range all {
		watch(t, "http://"+p.addr+"/v1/agent/members", 10*time.Second, func(ms []struct{ Name string }) bool { return len(ms) == 3 })
	}
	for _, p := range all {
		conn, err := net.Dial("udp", p.gossip)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range forgedAlives {
			if _, err := conn.Write(d); err != nil {
				t.Fatal(err)
			}
		}
		conn.Close()
	}
	// Each agent has read the datagrams once it counts them as refused, or
	// (before the fix) once it lists a fourth member.
	for _, p := range all {
		eventually.NoError(t, 10*time.Second, "the forged alives handled on "+p.addr, func() error {
			if n := metric(t, p, `pier_gossip_rejected_total{what="member"}`); n < 4 && len(members(t, p)) <= 3 {
				return fmt.Errorf("rejected %v", n)
			}
			return nil
		})
	}
	for _, p := range all {
		ms := members(t, p)
		var names []string
		for _, m := range ms {
			names = append(names, m.Name)
		}
		if strings.Join(names, ",") != "fa,fb,fc" {
			t.Errorf("%s lists members %q: %+v", p.addr, names, ms)
		}
		var nodes []struct{ Node string }
		_, body := curl(t, "http://"+p.addr+"/v1/catalog/nodes")
		json.Unmarshal([]byte(body), &nodes)
		if len(nodes) != 3 {
			t.Errorf("%s catalog nodes: %s", p.addr, body)
		}
	}

	// force-leave: this node refutes it (200, as Consul); a live node
	// answers and stays; a node that does not answer goes at once, alive
	// or not in memberlist's eyes.
	code, body := curl(t, "-X", "PUT", "http://"+a.addr+"/v1/agent/force-leave/fa")
	if code != 200 || len(members(t, a)) != 3 || members(t, a)[0].Status != 1 {
		t.Errorf("force-leave of this node: %d %s; members %+v", code, body, members(t, a))
	}
	code, body = curl(t, "-X", "PUT", "http://"+a.addr+"/v1/agent/force-leave/fb")
	if code != 200 || len(members(t, a)) != 3 || members(t, a)[1].Status != 1 {
		t.Errorf("force-leave of a live node: %d %s; members %+v", code, body, members(t, a))
	}
	c.cmd.Process.Signal(syscall.SIGSTOP)
	defer c.cmd.Process.Signal(syscall.SIGCONT)
	waitStopped(t, c.cmd.Process.Pid)
	code, body = curl(t, "-X", "PUT", "http://"+a.addr+"/v1/agent/force-leave/fc")
	if code != 200 {
		t.Fatalf("force-leave of a node that stopped answering: %d %s", code, body)
	}
	for _, p := range []*proc{a, b} {
		watch(t, "http://"+p.addr+"/v1/catalog/nodes", 10*time.Second, func(ns []struct{ Node string }) bool { return len(ns) == 2 })
	}
	ms := members(t, a)
	if len(ms) != 3 || ms[2].Name != "fc" || ms[2].Status != 3 { // 3: left
		t.Errorf("after force-leave of fc: %+v", ms)
	}
}

// waitStopped waits until the kernel reports pid stopped (state T).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "T" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d did not stop", pid)
}

// TestForgedPushPull: stream headers that claim a million nodes or a huge
// user message, 20 connections at once, leave the agent's heap where it
// was and the connections are closed at once; a real join afterwards still
// pushes and pulls state.
func TestForgedPushPull(t *testing.T) {
	a := startAgent(t, "-node", "pa", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	heap := func() float64 {
		resp, err := http.Get("http://" + a.addr + "/v1/agent/self")
		if err != nil {
			t.Fatalf("the agent is gone: %v\n%s", err, a.logs()[max(0, len(a.logs())-2000):])
		}
		resp.Body.Close()
		return metric(t, a, "go_memstats_heap_alloc_bytes")
	}
	before := heap()
	forged := [][]byte{
		// \x06 then {"Nodes":1048576,"UserStateLen":0,"Join":false}
		[]byte("\x06\x83\xa5Nodes\xce\x00\x10\x00\x00\xacUserStateLen\x00\xa4Join\xc2"),
		// \x08 then {"UserMsgLen":1<<40}
		[]byte("\x08\x81\xaaUserMsgLen\xcf\x00\x00\x01\x00\x00\x00\x00\x00"),
	}
	var conns []net.Conn
	for i := range 20 {
		conn, err := net.Dial("tcp", a.gossip)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(forged[i%len(forged)]); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	peak := before
	for i, conn := range conns {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(io.Discard, conn)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("forged stream %d still open after 5s", i)
		}
		peak = max(peak, heap())
	}
	t.Logf("heap %.1f MB before, %.1f MB at most with 20 forged streams open", before/1e6, peak/1e6)
	if peak > before+50e6 {
		t.Errorf("heap grew from %.1f MB to %.1f MB", before/1e6, peak/1e6)
	}
	if code, _ := curl(t, "http://"+a.addr+"/v1/agent/self"); code != 200 {
		t.Fatalf("the agent does not answer after the forged streams:\n%s", a.logs())
	}

	// A real join is a push/pull both ways: each learns the other's services.
	curl(t, "-X", "PUT", "-d", `{"Name":"before","Port":1}`, "http://"+a.addr+"/v1/agent/service/register")
	b := startAgent(t, "-node", "pb", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip)
	watch(t, "http://"+b.addr+"/v1/catalog/service/before", 10*time.Second, func(es []struct{ Node string }) bool { return len(es) == 1 })
	curl(t, "-X", "PUT", "-d", `{"Name":"after","Port":2}`, "http://"+b.addr+"/v1/agent/service/register")
	watch(t, "http://"+a.addr+"/v1/catalog/service/after", 10*time.Second, func(es []struct{ Node string }) bool { return len(es) == 1 })
	if n := metric(t, a, `pier_gossip_rejected_total{what="stream"}`); n < 20 {
		t.Errorf("refused streams counted: %v", n)
	}
}

// TestCompressedDatagramBomb: one unauthenticated datagram that LZW
// inflates to tens of megabytes is refused before memberlist inflates it,
// and the agent's heap stays where it was.
func TestCompressedDatagramBomb(t *testing.T) {
	a := startAgent(t, "-node", "za", "-data-dir", t.TempDir(), "-bind", "127.0.0.1")
	var z bytes.Buffer
	w := lzw.NewWriter(&z, lzw.LSB, 8)
	w.Write(make([]byte, 48<<20)) // a ping type byte (0) and zeros
	w.Close()
	n := z.Len()
	bomb := append([]byte("\x09\x82\xa4Algo\x00\xa3Buf\xc6"), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	bomb = append(bomb, z.Bytes()...)
	if len(bomb) > 65000 {
		t.Fatalf("the bomb is %d bytes, too large for a datagram", len(bomb))
	}
	before := metric(t, a, "go_memstats_heap_alloc_bytes")
	conn, err := net.Dial("udp", a.gossip)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 5 {
		if _, err := conn.Write(bomb); err != nil {
			t.Fatal(err)
		}
	}
	refused := func() float64 { return metric(t, a, `pier_gossip_rejected_total{what="packet"}`) }
	eventually.NoError(t, 10*time.Second, "the bombs refused", func() error {
		if got := refused(); got < 5 {
			return fmt.Errorf("refused datagrams counted: %v, want 5", got)
		}
		return nil
	})
	if after := metric(t, a, "go_memstats_heap_alloc_bytes"); after > before+20e6 {
		t.Errorf("heap grew from %.1f MB to %.1f MB", before/1e6, after/1e6)
	}
}
