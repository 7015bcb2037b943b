package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/deploy/testca"
	"github.com/pier-dev/pier/registry/raft"
)

// dialLayer is hashicorp/raft's stream layer over a dial function: what
// a stranger who reaches a server port runs to speak Raft to it.
type dialLayer struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (l dialLayer) Dial(a hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := l.dial(ctx, "tcp", string(a))
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{0x01}); err != nil { // Raft's first byte on the port
		c.Close()
		return nil, err
	}
	return c, nil
}
func (dialLayer) Accept() (net.Conn, error) { return nil, net.ErrClosed }
func (dialLayer) Close() error              { return nil }
func (dialLayer) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// forgeAppend sends a server port an AppendEntries of a later term whose
// one entry, committed at once, would set key: what a stranger who can
// speak Raft to a server does to forge the agreed state.
func forgeAppend(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, key string) error {
	tr := hraft.NewNetworkTransport(dialLayer{dial}, 1, 3*time.Second, io.Discard)
	defer tr.Close()
	data, _ := json.Marshal(map[string]any{"Type": 1, "Ops": []map[string]any{{"Verb": "set", "Key": key, "Value": base64.StdEncoding.EncodeToString([]byte("forged"))}}})
	req := &hraft.AppendEntriesRequest{
		RPCHeader:         hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: []byte("mallory"), Addr: []byte("127.0.0.1:1")},
		Term:              1 << 40,
		PrevLogEntry:      0,
		Entries:           []*hraft.Log{{Index: 1 << 30, Term: 1 << 40, Type: hraft.LogCommand, Data: data}},
		LeaderCommitIndex: 1 << 30,
	}
	var resp hraft.AppendEntriesResponse
	return tr.AppendEntries("victim", hraft.ServerAddress(addr), req, &resp)
}

// internalGet asks a server port's internal HTTP for path through dial.
func internalGet(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, path string) (int, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// keyDialer dials server ports with the identity of one gossip key.
func keyDialer(t *testing.T, key string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	k, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		t.Fatal(err)
	}
	return raft.KeyringSecurity(func() ([]byte, [][]byte, bool) { return k, [][]byte{k}, true }, nil).DialContext
}

func plainDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// raftState answers the leader a server names and its own last log
// index (from /v1/operator/raft/configuration).
func raftState(t *testing.T, p *proc) (leader string, index uint64) {
	t.Helper()
	_, leader = httpGet(t, "http://"+p.addr+"/v1/status/leader?stale")
	_, body := httpGet(t, "http://"+p.addr+"/v1/operator/raft/configuration?stale")
	var c struct {
		Servers []struct {
			Address   string
			LastIndex uint64
		}
	}
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatalf("raft configuration: %v %s", err, body)
	}
	for _, s := range c.Servers {
		if s.Address == serverAddr(p) {
			return leader, s.LastIndex
		}
	}
	t.Fatalf("%s is not in %s", serverAddr(p), body)
	return "", 0
}

// checkNotForged fails t if forgeAppend's entry reached p's log: it sits
// at index 1<<30 in term 1<<40, so taking it would put the index there and
// end the leader's term. The group's own writes (the client's catalog
// sync, coordinates) may move the index by a few between the two looks, so
// the index is bounded, not held still.
func checkNotForged(t *testing.T, p *proc, leader string, index uint64) {
	t.Helper()
	if l2, i2 := raftState(t, p); l2 != leader || i2 < index || i2 >= 1<<30 {
		t.Errorf("the Raft state moved: leader %s index %d, was %s %d", l2, i2, leader, index)
	}
}

// TestServerPortEncrypted: three servers and a client with -encrypt form
// a group, elect and take writes through the client's pooled forwarding
// connections, over the server port's keyring TLS. A stranger who reaches
// a server port, in plain or with another key, gets neither a Raft RPC nor
// an internal HTTP request in, and the state does not move; a rotation
// with pier keyring keeps the group writing, a server restarted after it
// (new connections, the new key only) rejoins, and the old key is shut out.
func TestServerPortEncrypted(t *testing.T) {
	k1, _, _ := pier(t, "keygen")
	k2, _, _ := pier(t, "keygen")
	k1, k2 = strings.TrimSpace(k1), strings.TrimSpace(k2)
	g := newRestartGroup(t, true, "-encrypt", k1)
	client := startAgent(t, "-node", "ec1", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-encrypt", k1, "-retry-join", g.procs[0].gossip)
	eventually.True(t, 20*time.Second, "the client knows the servers", func() bool {
		code, body := httpGet(t, "http://"+client.addr+"/v1/status/peers")
		return code == 200 && strings.Count(body, ":") == 3
	})
	// Writes through the client ride its pooled connections to a server.
	for i := range 30 {
		op := kvOp{key: fmt.Sprintf("enc/%03d", i), value: "v"}
		if err := kvDo(g.http, client.addr, &op); err != nil || op.code != 200 || op.body != "true" {
			t.Fatalf("PUT through the client: %v %d %s", err, op.code, op.body)
		}
		g.want[op.key] = op.value
	}

	target := serverAddr(g.procs[0])
	leader, index := raftState(t, g.procs[0])
	strangers := map[string]func(ctx context.Context, network, addr string) (net.Conn, error){
		"plain":       plainDial,
		"another key": keyDialer(t, k2),
	}
	for what, dial := range strangers {
		if err := forgeAppend(dial, target, "forged"); err == nil {
			t.Errorf("%s: a forged AppendEntries was answered", what)
		}
		for _, path := range []string{raft.PeersPath, raft.MirrorPath, "/v1/kv/enc/000"} {
			if code, err := internalGet(dial, target, path); err == nil {
				t.Errorf("%s: the internal HTTP answered %s with %d", what, path, code)
			}
		}
	}
	if got := kvDumpQuery(t, g.procs[0].addr, "forged", "recurse&stale"); len(got) != 0 {
		t.Fatalf("the forged key is there: %v", got)
	}
	checkNotForged(t, g.procs[0], leader, index)
	if code, err := internalGet(keyDialer(t, k1), target, raft.PeersPath); err != nil || code != 200 {
		t.Fatalf("the control: the internal HTTP with the key: %d %v", code, err)
	}

	// Rotation: each step's writes go through.
	for n, step := range [][]string{{"-install", k2}, {"-use", k2}, {"-remove", k1}} {
		out, errOut, rc := pier(t, append([]string{"keyring", "-http-addr", client.addr}, step...)...)
		if rc != 0 || !strings.Contains(out, "Success!") {
			t.Fatalf("pier keyring %v: %d %s%s", step, rc, out, errOut)
		}
		g.write(n%3, "rot"+strconv.Itoa(n), 3)
	}
	// A server restarted now dials and is dialled with the new key only.
	f := g.follower()
	g.procs[f].stop(syscall.SIGKILL)
	g.write((f+1)%3, "down", 5)
	g.restart(f)
	g.caughtUp(f, 60*time.Second)
	if code, err := internalGet(keyDialer(t, k2), serverAddr(g.procs[f]), raft.PeersPath); err != nil || code != 200 {
		t.Errorf("the new key: %d %v", code, err)
	}
	for i := range g.procs {
		if code, err := internalGet(keyDialer(t, k1), serverAddr(g.procs[i]), raft.PeersPath); err == nil {
			t.Errorf("rs%d answers the removed key: %d", i+1, code)
		}
	}
	g.write(f, "after", 3)
	diffKV(t, "the client after the rotation", kvDumpQuery(t, client.addr, "", "recurse"), g.want)
}

// certDialer dials server ports with TLS under cert, checking the server
// against ca.
func certDialer(t *testing.T, ca *testca.CA, cert testca.Cert) func(ctx context.Context, network, addr string) (net.Conn, error) {
	t.Helper()
	sec, err := raft.CertSecurity(raft.CertConfig{CAFile: ca.File, CertFile: cert.CertFile, KeyFile: cert.KeyFile, VerifyOutgoing: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return sec.DialContext
}

// TestServerPortMutualTLS: servers and a client with Consul's
// tls.internal_rpc (verify_incoming, verify_outgoing,
// verify_server_hostname) form a group and take writes over mutual TLS;
// a plain stranger, and one with a certificate of another CA, get nothing
// in.
func TestServerPortMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t, dir, "pier")
	srv := ca.Issue(t, "server.dc1.consul", nil)
	cfg := filepath.Join(dir, "tls.yaml")
	yaml := fmt.Sprintf("tls:\n  defaults:\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n  internal_rpc:\n    verify_incoming: true\n    verify_outgoing: true\n    verify_server_hostname: true\n",
		ca.File, srv.CertFile, srv.KeyFile)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newRestartGroup(t, true, "-config-file", cfg)
	client := startAgent(t, "-node", "tc1", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-config-file", cfg, "-retry-join", g.procs[0].gossip)
	eventually.True(t, 20*time.Second, "the client knows the servers", func() bool {
		code, body := httpGet(t, "http://"+client.addr+"/v1/status/peers")
		return code == 200 && strings.Count(body, ":") == 3
	})
	for i := range 10 {
		op := kvOp{key: fmt.Sprintf("tls/%03d", i), value: "v"}
		if err := kvDo(g.http, client.addr, &op); err != nil || op.code != 200 || op.body != "true" {
			t.Fatalf("PUT through the client: %v %d %s", err, op.code, op.body)
		}
		g.want[op.key] = op.value
	}
	target := serverAddr(g.procs[0])
	leader, index := raftState(t, g.procs[0])
	other := testca.New(t, t.TempDir(), "mallory")
	strangers := map[string]func(ctx context.Context, network, addr string) (net.Conn, error){
		"plain":      plainDial,
		"another CA": certDialer(t, other, other.Issue(t, "server.dc1.consul", nil)),
	}
	for what, dial := range strangers {
		if err := forgeAppend(dial, target, "forged"); err == nil {
			t.Errorf("%s: a forged AppendEntries was answered", what)
		}
		if code, err := internalGet(dial, target, raft.PeersPath); err == nil {
			t.Errorf("%s: the internal HTTP answered %d", what, code)
		}
	}
	if got := kvDumpQuery(t, g.procs[0].addr, "forged", "recurse&stale"); len(got) != 0 {
		t.Fatalf("the forged key is there: %v", got)
	}
	checkNotForged(t, g.procs[0], leader, index)
	if code, err := internalGet(certDialer(t, ca, ca.Issue(t, "client.dc1.consul", nil)), target, raft.PeersPath); err != nil || code != 200 {
		t.Fatalf("the control: a certificate of the CA: %d %v", code, err)
	}
	// A follower's own (?stale) state has every write once it applied them.
	g.caughtUp(2, 30*time.Second)
}
