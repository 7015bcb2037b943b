package raft

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/deploy/testca"
)

// testKeyring is one agent's gossip keyring, changed as consul keyring
// changes it.
type testKeyring struct {
	mu      sync.Mutex
	primary []byte
	keys    [][]byte
}

func newTestKeyring(k []byte) *testKeyring { return &testKeyring{primary: k, keys: [][]byte{k}} }

func (k *testKeyring) src() ([]byte, [][]byte, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.primary, append([][]byte(nil), k.keys...), true
}

func (k *testKeyring) install(key []byte) {
	k.mu.Lock()
	k.keys = append(k.keys, key)
	k.mu.Unlock()
}

func (k *testKeyring) use(key []byte) {
	k.mu.Lock()
	k.primary = key
	k.mu.Unlock()
}

func (k *testKeyring) remove(key []byte) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, o := range k.keys {
		if string(o) == string(key) {
			k.keys = append(k.keys[:i], k.keys[i+1:]...)
			return
		}
	}
}

func gossipKey(b byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b
	}
	return k
}

// forge sends from's dialer's AppendEntries to m: one entry of a later
// term that sets key, committed at once. A server that takes it steps
// down and applies the entry.
func forge(t *testing.T, from *Security, m *member, key string) error {
	t.Helper()
	attacker, err := ListenServerPort("127.0.0.1:0", "", from)
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	tr := hraft.NewNetworkTransport(attacker.streamLayer(), 1, 2*time.Second, io.Discard)
	defer tr.Close()
	data, err := encode(command{Type: cmdKV, Ops: []KVOp{{Verb: KVSet, Key: key, Value: []byte("forged")}}})
	if err != nil {
		t.Fatal(err)
	}
	last := m.n.raft.LastIndex()
	lastTerm, _ := strconv.ParseUint(m.n.raft.Stats()["last_log_term"], 10, 64)
	term := m.n.raft.CurrentTerm() + 100
	req := &hraft.AppendEntriesRequest{
		RPCHeader:    hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: []byte("mallory"), Addr: []byte(attacker.Addr())},
		Term:         term,
		PrevLogEntry: last, PrevLogTerm: lastTerm,
		Entries:           []*hraft.Log{{Index: last + 1, Term: term, Type: hraft.LogCommand, Data: data}},
		LeaderCommitIndex: last + 1,
	}
	var resp hraft.AppendEntriesResponse
	if err := tr.AppendEntries(hraft.ServerID(m.n.ID()), hraft.ServerAddress(m.port.Addr()), req, &resp); err != nil {
		return err
	}
	if !resp.Success {
		return fmt.Errorf("refused by Raft itself: %+v", resp)
	}
	return nil
}

// peersOver asks m's internal HTTP for its peers through sec's dialer.
func peersOver(sec *Security, m *member) error {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: sec.DialContext, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + m.port.Addr() + PeersPath)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	return nil
}

// The control: a plain port takes a stranger's AppendEntries, and the
// forged write lands in the agreed state. This is what the port's
// security must stop.
func TestPlainPortTakesForgedEntries(t *testing.T) {
	m := startMember(t, memberOpts{id: "plain", expect: 1})
	m.n.Reconcile(m.peer, nil)
	waitLeader(t, m)
	if err := forge(t, nil, m, "forged"); err != nil {
		t.Fatalf("the forged AppendEntries was refused by a plain port: %v", err)
	}
	waitKey(t, "forged", m)
	if err := peersOver(nil, m); err != nil {
		t.Fatalf("internal HTTP over a plain port: %v", err)
	}
}

// With the gossip keyring's identities, neither a plain connection nor
// TLS under another key gets a Raft RPC or an internal HTTP request in,
// and the state stays as it was; a dialer with the key does.
func TestKeyringPortRefusesStrangers(t *testing.T) {
	kr := newTestKeyring(gossipKey(1))
	sec := KeyringSecurity(kr.src, nil)
	m := startMember(t, memberOpts{id: "keyed", expect: 1, sec: sec})
	m.n.Reconcile(m.peer, nil)
	waitLeader(t, m)
	if r, err := m.n.KV(KVOp{Verb: KVSet, Key: "real", Value: []byte("v")}); err != nil || !r.OK {
		t.Fatalf("write: %+v %v", r, err)
	}
	index, term := m.n.raft.LastIndex(), m.n.raft.CurrentTerm()
	wrong := KeyringSecurity(newTestKeyring(gossipKey(2)).src, nil)
	for name, from := range map[string]*Security{"plain": nil, "another key": wrong} {
		if err := forge(t, from, m, "forged"); err == nil {
			t.Errorf("%s: the forged AppendEntries was taken", name)
		}
		if err := peersOver(from, m); err == nil {
			t.Errorf("%s: the internal HTTP answered", name)
		}
	}
	if _, ok := m.n.State().KV("forged"); ok {
		t.Fatal("the forged key is in the state")
	}
	if m.n.raft.LastIndex() != index || m.n.raft.CurrentTerm() != term || !m.n.IsLeader() {
		t.Errorf("the log moved: index %d term %d leader %v, was %d %d", m.n.raft.LastIndex(), m.n.raft.CurrentTerm(), m.n.IsLeader(), index, term)
	}
	if err := peersOver(sec, m); err != nil {
		t.Errorf("with the key: %v", err)
	}
}

// Three servers on keyring identities form a group, and a key rotation
// (install, use one server at a time, remove) keeps them replicating at
// every step; a key removed everywhere lets no one in any more.
func TestKeyringPortRotation(t *testing.T) {
	old, next := gossipKey(1), gossipKey(3)
	var rings []*testKeyring
	var ms []*member
	for i := range 3 {
		kr := newTestKeyring(old)
		rings = append(rings, kr)
		ms = append(ms, startMember(t, memberOpts{id: fmt.Sprintf("k%d", i), expect: 3, sec: KeyringSecurity(kr.src, nil)}))
	}
	reconcileAll(ms...)
	lead := waitLeader(t, ms...)
	waitVoters(t, lead, "k0", "k1", "k2")
	step := 0
	write := func(what string) {
		t.Helper()
		step++
		key := fmt.Sprintf("step%d", step)
		eventually.NoError(t, 10*time.Second, "a write after "+what, func() error {
			l := waitLeader(t, ms...)
			if r, err := l.n.KV(KVOp{Verb: KVSet, Key: key, Value: []byte(what)}); err != nil || !r.OK {
				return fmt.Errorf("%+v %v", r, err)
			}
			return nil
		})
		waitKey(t, key, ms...)
	}
	write("forming")
	for _, kr := range rings {
		kr.install(next)
	}
	write("install")
	// Each server's new connections show the new key while the others
	// still show the old one; a restart of the transport's connections
	// is what makes that matter, so each server dials afresh.
	for i, kr := range rings {
		kr.use(next)
		for _, o := range ms {
			if err := peersOver(o.port.Security(), ms[(i+1)%3]); err != nil {
				t.Fatalf("after %d servers use the new key, %s cannot reach %s: %v", i+1, o.n.ID(), ms[(i+1)%3].n.ID(), err)
			}
		}
		write(fmt.Sprintf("use on %d", i+1))
	}
	// A stranger's kept-alive connection, made while the old key was
	// still installed, is cut once the key is removed.
	staleRing := newTestKeyring(old)
	staleRing.install(next) // it takes the servers' new key; they must refuse its old one
	stale := KeyringSecurity(staleRing.src, nil)
	kept := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: stale.DialContext}}
	defer kept.Transport.(*http.Transport).CloseIdleConnections()
	get := func() error {
		resp, err := kept.Get("http://" + ms[0].port.Addr() + PeersPath)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil
	}
	if err := get(); err != nil {
		t.Fatalf("the old key while it is installed: %v", err)
	}
	for _, kr := range rings {
		kr.remove(old)
	}
	write("remove")
	eventually.True(t, 5*time.Second, "the kept-alive connection of the removed key is cut", func() bool { return get() != nil })
	for _, m := range ms {
		if err := peersOver(stale, m); err == nil {
			t.Errorf("%s answers a dialer with the removed key", m.n.ID())
		}
		if err := peersOver(m.port.Security(), ms[0]); err != nil {
			t.Errorf("%s cannot reach k0 with the new key: %v", m.n.ID(), err)
		}
	}
	write("a stranger was refused")
}

func certSecurity(t *testing.T, ca *testca.CA, name string, in, out bool, serverName string) *Security {
	t.Helper()
	c := ca.Issue(t, name, nil)
	s, err := CertSecurity(CertConfig{CAFile: ca.File, CertFile: c.CertFile, KeyFile: c.KeyFile, VerifyIncoming: in, VerifyOutgoing: out, ServerName: serverName}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// With certificates and verify_incoming/verify_outgoing, servers form a
// group over TLS, and neither a plain connection, TLS without a
// certificate nor one signed by another CA gets in.
func TestCertPortMutualTLS(t *testing.T) {
	ca := testca.New(t, t.TempDir(), "pier")
	const name = "server.dc1.consul"
	var ms []*member
	for i := range 2 {
		ms = append(ms, startMember(t, memberOpts{id: fmt.Sprintf("c%d", i), expect: 2, sec: certSecurity(t, ca, name, true, true, name)}))
	}
	reconcileAll(ms...)
	lead := waitLeader(t, ms...)
	waitVoters(t, lead, "c0", "c1")
	if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: "real", Value: []byte("v")}); err != nil || !r.OK {
		t.Fatalf("write: %+v %v", r, err)
	}
	waitKey(t, "real", ms...)
	index := lead.n.raft.LastIndex()

	other := testca.New(t, t.TempDir(), "mallory")
	strangers := map[string]*Security{
		"plain":          nil,
		"another CA":     certSecurity(t, other, name, false, true, ""),
		"no certificate": {client: &tls.Config{InsecureSkipVerify: true}},
		"a gossip key":   KeyringSecurity(newTestKeyring(gossipKey(1)).src, nil),
	}
	for what, from := range strangers {
		if err := forge(t, from, lead, "forged"); err == nil {
			t.Errorf("%s: the forged AppendEntries was taken", what)
		}
		if err := peersOver(from, lead); err == nil {
			t.Errorf("%s: the internal HTTP answered", what)
		}
	}
	if _, ok := lead.n.State().KV("forged"); ok || lead.n.raft.LastIndex() != index {
		t.Fatalf("the state moved: forged %v, index %d, was %d", ok, lead.n.raft.LastIndex(), index)
	}
	// A dialer that checks the server's name refuses a server whose
	// certificate names another.
	wrongName := certSecurity(t, ca, name, true, true, "server.dc2.consul")
	if err := peersOver(wrongName, lead); err == nil {
		t.Error("verify_server_hostname took a certificate of another name")
	}
	if err := peersOver(certSecurity(t, ca, "client.dc1.consul", false, true, name), lead); err != nil {
		t.Errorf("an agent with a certificate of the CA: %v", err)
	}
}

// Without verify_incoming a port with a certificate still takes plain
// connections, as Consul's does while a cluster moves to TLS.
func TestCertPortWithoutVerifyIncoming(t *testing.T) {
	ca := testca.New(t, t.TempDir(), "pier")
	m := startMember(t, memberOpts{id: "soft", expect: 1, sec: certSecurity(t, ca, "s", false, false, "")})
	m.n.Reconcile(m.peer, nil)
	waitLeader(t, m)
	if err := peersOver(nil, m); err != nil {
		t.Errorf("plain: %v", err)
	}
	if err := peersOver(certSecurity(t, ca, "c", false, true, ""), m); err != nil {
		t.Errorf("TLS: %v", err)
	}
}

// countingListener counts the connections its listener hands out.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// An http.Transport over Security.DialContext keeps its TLS connections
// alive and reuses them, as the API's forwarder does: a run of requests
// costs one handshake, not one each.
func TestSecurityDialPools(t *testing.T) {
	sec := KeyringSecurity(newTestKeyring(gossipKey(5)).src, nil)
	p, err := ListenServerPort("127.0.0.1:0", "", sec)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ln := &countingListener{Listener: p.HTTP()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	tr := &http.Transport{DialContext: sec.DialContext}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for i := range 20 {
		resp, err := c.Get("http://" + p.Addr() + "/x")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := ln.n.Load(); n != 1 {
		t.Errorf("20 requests took %d connections, want 1 kept alive", n)
	}
}
