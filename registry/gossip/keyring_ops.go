package gossip

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
)

// Key rotation without downtime, as consul keyring: install a new key on
// every node (all keys decrypt), make it the primary everywhere (it
// encrypts), then remove the old one. Each operation is sent to every alive
// member over TCP, with the keys they already share, and each member answers
// with its keys.

// KeyringResponse is one node's answer to a keyring operation.
type KeyringResponse struct {
	Node    string
	Keys    []string // base64
	Primary string
	Error   string
}

// ErrNoEncryption is a keyring operation on an agent that gossips in clear.
var ErrNoEncryption = errors.New("gossip: encryption is not enabled (start the agents with -encrypt)")

type keyringMsg struct {
	ID   uint64 `json:"id"`
	Op   string `json:"op"`
	Key  string `json:"key,omitempty"`
	From string `json:"from"`
}

type keyringReply struct {
	ID uint64 `json:"id"`
	KeyringResponse
}

// keyringState is the part of Gossip that keyring operations use.
type keyringState struct {
	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan KeyringResponse
}

// applyKeyring runs one operation on this node's keyring. The keyring the
// operation makes is saved first, durably: memory changes only once the
// data dir has it, so a restart never brings back keys the node answered as
// gone (or loses one it answered as installed).
func (g *Gossip) applyKeyring(op, key string) KeyringResponse {
	resp := KeyringResponse{Node: g.reg.NodeName()}
	kr := g.keyring
	var err error
	if op != "list" {
		var k []byte
		if k, err = ParseKey(key); err == nil {
			var primary []byte
			var keys [][]byte
			if primary, keys, err = nextKeyring(kr, op, k); err == nil {
				err = g.saveKeyring(primary, keys)
			}
		}
		if err == nil {
			switch op {
			case "install":
				err = kr.AddKey(k)
			case "use":
				err = kr.UseKey(k)
			case "remove":
				err = kr.RemoveKey(k)
			}
		}
	}
	if err != nil {
		resp.Error = err.Error()
	}
	for _, k := range kr.GetKeys() {
		resp.Keys = append(resp.Keys, base64.StdEncoding.EncodeToString(k))
	}
	resp.Primary = base64.StdEncoding.EncodeToString(kr.GetPrimaryKey())
	return resp
}

// nextKeyring answers the primary key and the keys that op would leave,
// refusing what memberlist's Keyring would refuse, without changing kr.
func nextKeyring(kr *memberlist.Keyring, op string, k []byte) ([]byte, [][]byte, error) {
	// GetKeys answers the keyring's own slice: work on a copy.
	primary, keys := kr.GetPrimaryKey(), slices.Clone(kr.GetKeys())
	at := slices.IndexFunc(keys, func(o []byte) bool { return bytes.Equal(o, k) })
	switch op {
	case "install":
		if at < 0 {
			keys = append(keys, k)
		}
	case "use":
		if at < 0 {
			return nil, nil, errors.New("Requested key is not in the keyring")
		}
		primary = k
	case "remove":
		if bytes.Equal(k, primary) {
			return nil, nil, errors.New("Removing the primary key is not allowed")
		}
		if at >= 0 {
			keys = slices.Delete(keys, at, at+1)
		}
	default:
		return nil, nil, fmt.Errorf("unknown keyring operation %q", op)
	}
	return primary, keys, nil
}

// Keyring runs op (list, install, use or remove) on every alive member and
// returns each one's answer, this node's first. Members that do not answer
// within the leave timeout are reported with an error.
func (g *Gossip) Keyring(op, key string) ([]KeyringResponse, error) {
	if g.keyring == nil {
		return nil, ErrNoEncryption
	}
	switch op {
	case "list", "install", "use", "remove":
	default:
		return nil, fmt.Errorf("gossip: unknown keyring operation %q", op)
	}
	if op != "list" {
		if _, err := ParseKey(key); err != nil {
			return nil, err
		}
	}
	out := []KeyringResponse{g.applyKeyring(op, key)}
	peers := g.alivePeers()
	g.kr.mu.Lock()
	g.kr.next++
	id := g.kr.next
	// Room for an answer and a send error from every peer: nothing that
	// writes here ever blocks, also after this call has returned.
	ch := make(chan KeyringResponse, 2*len(peers)+1)
	g.kr.waiting[id] = ch
	g.kr.mu.Unlock()
	defer func() {
		g.kr.mu.Lock()
		delete(g.kr.waiting, id)
		g.kr.mu.Unlock()
	}()
	msg, _ := json.Marshal(keyringMsg{ID: id, Op: op, Key: key, From: g.reg.NodeName()})
	msg = append([]byte{msgKeyring}, msg...)
	for _, n := range peers {
		g.sendReliable(n, msg, func(err error) {
			if err != nil {
				select {
				case ch <- KeyringResponse{Node: n.Name, Error: err.Error()}:
				default:
				}
			}
		})
	}
	answered := map[string]bool{}
	timeout := time.After(g.cfg.LeaveTimeout)
	for len(answered) < len(peers) {
		select {
		case r := <-ch:
			if !answered[r.Node] {
				answered[r.Node] = true
				out = append(out, r)
			}
		case <-timeout:
			for _, n := range peers {
				if !answered[n.Name] {
					out = append(out, KeyringResponse{Node: n.Name, Error: "no answer in time"})
				}
			}
			return out, nil
		}
	}
	return out, nil
}

// alivePeers copies the addresses of the other alive members.
func (g *Gossip) alivePeers() []*memberlist.Node {
	g.mu.Lock()
	defer g.mu.Unlock()
	var to []*memberlist.Node
	for name, m := range g.members {
		if name != g.reg.NodeName() && m.Status == registry.MemberAlive {
			to = append(to, &memberlist.Node{Name: name, Addr: net.ParseIP(m.Addr), Port: uint16(m.Port)})
		}
	}
	return to
}

// onKeyringMsg applies an operation another node asked for and answers it;
// called from the gossip loop, it sends the answer in the background.
func (g *Gossip) onKeyringMsg(b []byte) {
	var m keyringMsg
	if json.Unmarshal(b, &m) != nil || g.keyring == nil {
		return
	}
	reply := keyringReply{ID: m.ID, KeyringResponse: g.applyKeyring(m.Op, m.Key)}
	g.log.Info("keyring operation from another node", "op", m.Op, "from", m.From, "err", reply.Error)
	g.mu.Lock()
	from, ok := g.members[m.From]
	g.mu.Unlock()
	if !ok {
		return
	}
	to := &memberlist.Node{Name: m.From, Addr: net.ParseIP(from.Addr), Port: uint16(from.Port)}
	b, _ = json.Marshal(reply)
	g.sendReliable(to, append([]byte{msgKeyringReply}, b...), nil)
}

// maxReliableSends bounds the TCP sends that keyring operations make at
// once: one per peer, so a cluster of thousands does not open thousands of
// connections (and goroutines) at the same moment.
const maxReliableSends = 16

// sendReliable sends msg to n over TCP in the background, tracked so that
// Run waits for it; done, if not nil, gets the outcome. Sends still
// waiting for a slot when Run ends give up at once; those under way end
// within memberlist's TCP timeout.
func (g *Gossip) sendReliable(n *memberlist.Node, msg []byte, done func(error)) {
	g.background(func() error { return g.ml.SendReliable(n, msg) }, done)
}

// background runs op on its own goroutine, at most maxReliableSends at
// once, tracked so that Run waits for it; done, if not nil, gets the
// outcome. An op still waiting for a slot when Run ends gives up at once.
func (g *Gossip) background(op func() error, done func(error)) {
	g.sendMu.Lock()
	if g.sendsClosed {
		g.sendMu.Unlock()
		if done != nil {
			done(errors.New("gossip: shutting down"))
		}
		return
	}
	g.sends.Add(1)
	g.sendMu.Unlock()
	go func() {
		defer g.sends.Done()
		var err error
		select {
		case g.sendSlots <- struct{}{}:
			err = op()
			<-g.sendSlots
		case <-g.stopping:
			err = errors.New("gossip: shutting down")
		}
		if done != nil {
			done(err)
		}
	}()
}

func (g *Gossip) onKeyringReply(b []byte) {
	var r keyringReply
	if json.Unmarshal(b, &r) != nil {
		return
	}
	g.kr.mu.Lock()
	ch := g.kr.waiting[r.ID]
	g.kr.mu.Unlock()
	if ch != nil {
		select {
		case ch <- r.KeyringResponse:
		default:
		}
	}
}

// keyringFile is the keyring as the data dir keeps it: the primary first.
type keyringFile struct {
	Keys []string `json:"keys"`
}

// loadKeyring reads the saved keyring; nil without one.
func loadKeyring(path string) (*memberlist.Keyring, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gossip: keyring: %w", err)
	}
	var f keyringFile
	if err := json.Unmarshal(b, &f); err != nil || len(f.Keys) == 0 {
		return nil, fmt.Errorf("gossip: corrupt keyring file %s (fix or remove it)", path)
	}
	var keys [][]byte
	for _, s := range f.Keys {
		k, err := ParseKey(s)
		if err != nil {
			return nil, fmt.Errorf("gossip: keyring file %s: %w", path, err)
		}
		keys = append(keys, k)
	}
	return memberlist.NewKeyring(keys, keys[0])
}

// saveKeyring writes a keyring to the data dir, so that a restarted agent
// keeps the keys the cluster moved to rather than its -encrypt key: a temp
// file, fsynced, renamed over the old one, and the directory fsynced.
func (g *Gossip) saveKeyring(primary []byte, keys [][]byte) error {
	if g.cfg.KeyringFile == "" {
		return nil
	}
	f := keyringFile{Keys: []string{base64.StdEncoding.EncodeToString(primary)}}
	for _, k := range keys {
		if s := base64.StdEncoding.EncodeToString(k); s != f.Keys[0] {
			f.Keys = append(f.Keys, s)
		}
	}
	b, _ := json.Marshal(f)
	dir := filepath.Dir(g.cfg.KeyringFile)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("gossip: saving the keyring: %w", err)
	}
	tmp := g.cfg.KeyringFile + ".tmp." + strconv.Itoa(os.Getpid())
	err := func() error {
		fh, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = fh.Write(b)
		if err == nil {
			err = fh.Sync()
		}
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, g.cfg.KeyringFile)
		}
		if err != nil {
			os.Remove(tmp)
			return err
		}
		d, err := os.Open(dir)
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Sync()
	}()
	if err != nil {
		return fmt.Errorf("gossip: saving the keyring: %w", err)
	}
	return nil
}

// Keys answers the keyring: the primary key and every key, copies; both
// nil when gossip is not encrypted. The server port derives its
// identities from them (registry/raft's KeyringSecurity).
func (g *Gossip) Keys() (primary []byte, keys [][]byte) {
	if g.keyring == nil {
		return nil, nil
	}
	for _, k := range g.keyring.GetKeys() {
		keys = append(keys, slices.Clone(k))
	}
	return slices.Clone(g.keyring.GetPrimaryKey()), keys
}
