package raft

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// A server restarted on its data dir at a new address (another port, or
// another host) is in the configuration at its old one, where nobody
// answers. The leader learns new addresses from gossip, but gossip takes
// long to believe one: memberlist refuses a known name at a new address
// until the old entry has been dead for DeadNodeReclaimTime (30 s), and
// meanwhile marks the name failed, so the leader's cleanup would remove
// the server at the same moment. So the server says it itself: while its
// configuration has its ID at another address, it tells every server of
// that configuration (POST PeersPath); the leader asks the new address
// who answers there (GET PeersPath, which names its ID) and moves the
// entry in place with AddVoter, as Consul's leader does when serf shows a
// known server ID at a new address. A server that answers as itself at its
// configured address is also not removed on gossip's word that it failed.

// movedMsg is what a moved server POSTs to PeersPath.
type movedMsg struct {
	ID   string
	Addr string
}

// errNotLeaderHere answers a move told to a server that does not lead.
var errNotLeaderHere = errors.New("not the leader")

// moveServer moves a server of the configuration to addr, once the
// server port at addr answers as id. Leader only.
func (n *Node) moveServer(ctx context.Context, m movedMsg) error {
	if !n.IsLeader() {
		return errNotLeaderHere
	}
	cfg, err := n.Configuration()
	if err != nil {
		return err
	}
	var found *Server
	for i := range cfg {
		if cfg[i].ID == m.ID {
			found = &cfg[i]
		}
		if cfg[i].Address == m.Addr && cfg[i].ID != m.ID {
			return fmt.Errorf("%s is %s's address in the configuration", m.Addr, cfg[i].ID)
		}
	}
	switch {
	case found == nil:
		return fmt.Errorf("%s is not in the configuration (a new server is added from gossip)", m.ID)
	case found.Address == m.Addr:
		return nil
	}
	info, err := n.askPeers(ctx, m.Addr)
	if err != nil {
		return fmt.Errorf("%s does not answer: %w", m.Addr, err)
	}
	if info.ID != m.ID {
		return fmt.Errorf("%s answers as %q, not %q", m.Addr, info.ID, m.ID)
	}
	if err := n.AddVoter(m.ID, m.Addr); err != nil {
		return err
	}
	n.log.Info("raft: a server's address changed (it said so)", "id", m.ID, "node", n.nameOf(m.ID), "from", found.Address, "to", m.Addr)
	return nil
}

func (n *Node) nameOf(id string) string {
	n.group.mu.Lock()
	defer n.group.mu.Unlock()
	return n.group.names[id]
}

// serveMoved answers POST PeersPath.
func (n *Node) serveMoved(w http.ResponseWriter, r *http.Request) {
	var m movedMsg
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<10)).Decode(&m); err != nil || m.ID == "" || m.Addr == "" {
		http.Error(w, "want a JSON body with ID and Addr", http.StatusBadRequest)
		return
	}
	err := n.moveServer(r.Context(), m)
	switch {
	case err == nil:
	case errors.Is(err, errNotLeaderHere):
		http.Error(w, err.Error(), http.StatusConflict)
	default:
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
	}
}

// announceMove tells the servers of this server's configuration its new
// address when the configuration has it elsewhere; it answers when to try
// again (0: nothing to tell, or the leader took it).
func (n *Node) announceMove(ctx context.Context, self Peer, peers []Peer) time.Duration {
	cfg, err := n.Configuration()
	if err != nil {
		return 0
	}
	old := ""
	targets := map[string]bool{}
	for _, s := range cfg {
		if s.ID == self.ID {
			old = s.Address
		} else {
			targets[s.Address] = true
		}
	}
	if old == "" || old == self.Addr {
		return 0
	}
	// Servers that moved too are found at their gossip address.
	for _, p := range peers {
		if p.ID != self.ID && p.Addr != "" {
			targets[p.Addr] = true
		}
	}
	body, _ := json.Marshal(movedMsg{ID: self.ID, Addr: self.Addr})
	for addr := range targets {
		ctx, cancel := context.WithTimeout(ctx, askTimeout+n.cfg.ApplyTimeout)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+PeersPath, bytes.NewReader(body))
		if err != nil {
			cancel()
			continue
		}
		resp, err := n.group.client.Do(req)
		cancel()
		if err != nil {
			continue
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			n.log.Info("raft: the leader moved this server to its new address", "from", old, "to", self.Addr, "leader", addr)
			return 0
		}
	}
	return retryPause
}

// stillAnswers drops from remove the guessed removals of servers that
// answer as themselves at their configured address: gossip may call a
// server failed that Raft reaches (a server whose new address gossip does
// not believe yet), and removing it would cost a voter for nothing.
func (n *Node) stillAnswers(ctx context.Context, remove []removal) []removal {
	out := remove[:0]
	for _, r := range remove {
		if r.guessed {
			if info, err := n.askPeers(ctx, r.srv.Address); err == nil && info.ID == r.srv.ID {
				continue
			}
		}
		out = append(out, r)
	}
	return out
}
