package raft

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/registry"
)

// The servers find each other through gossip and stay one healthy group
// here: the agent hands Reconcile gossip's view of the servers, and a loop
// owned by Run bootstraps a new group (bootstrap-expect) and, on the
// leader, adds the servers gossip sees alive and removes the ones that
// left or stay failed, as Consul's leader and autopilot do.

// Peer is one server as gossip sees it.
type Peer struct {
	ID     string // its Raft ID (the node's ID)
	Name   string // its node name
	Addr   string // its server port, host:port
	Expect int    // its bootstrap-expect; 0: none
	Status registry.MemberStatus
	// Since is when it entered Status; zero: from when this Node first
	// saw it in that status.
	Since time.Time
}

// PeersPath is where a server's internal HTTP serves PeersHandler.
const PeersPath = "/pier/v1/raft/peers"

// Gossip tag keys and the role value of a server, as Consul's.
const (
	TagRole    = "role"
	TagID      = "id"
	TagDC      = "dc"
	TagPort    = "port"
	TagExpect  = "expect"
	RoleServer = "consul"
)

// ServerTags answers the gossip tags that make an agent a server to the
// others (added to the agent's own: role, id, port, expect); serverAddr is
// its ServerPort's Addr.
func ServerTags(id, serverAddr string, expect int) map[string]string {
	t := map[string]string{TagRole: RoleServer, TagID: id}
	if _, port, err := net.SplitHostPort(serverAddr); err == nil {
		t[TagPort] = port
	}
	if expect > 0 {
		t[TagExpect] = strconv.Itoa(expect)
	}
	return t
}

// PeerFromMember reads a gossip member's server tags; ok is false for a
// client, a server of another datacenter (when dc is set) or one whose
// tags are incomplete. Since is left zero.
func PeerFromMember(m registry.Member, dc string) (p Peer, ok bool) {
	t := m.Tags
	if t[TagRole] != RoleServer || t[TagID] == "" || (dc != "" && t[TagDC] != "" && t[TagDC] != dc) {
		return Peer{}, false
	}
	port, err := strconv.Atoi(t[TagPort])
	if err != nil || port <= 0 || port > 65535 {
		return Peer{}, false
	}
	host := m.Addr
	if h, _, err := net.SplitHostPort(m.Addr); err == nil {
		host = h
	}
	expect, _ := strconv.Atoi(t[TagExpect])
	return Peer{ID: t[TagID], Name: m.Name, Addr: net.JoinHostPort(host, strconv.Itoa(port)), Expect: expect, Status: m.Status}, true
}

// group is the Node's part that follows the servers.
type group struct {
	kick chan struct{} // capacity 1: a burst of Reconciles wakes the loop once

	mu        sync.Mutex
	have      bool
	self      Peer
	peers     []Peer            // latest wins
	names     map[string]string // Raft ID → node name
	lastIndex map[string]uint64 // Raft ID → last log index it reported (leader)
	polled    map[string]polled // Raft ID → its answer to the leader's last poll

	gen  uint64        // Reconciles so far
	done atomic.Uint64 // the gen of the last finished pass, for tests

	// Owned by the loop.
	bootstrapped bool // bootstrapped, or found it must not: never again
	since        map[string]seen
	absent       map[string]time.Time // in the configuration, unknown to gossip since
	warned       string
	client       *http.Client
}

type seen struct {
	status registry.MemberStatus
	at     time.Time
}

// askTimeout bounds one ask over the internal HTTP, so that a server that
// does not answer delays a pass by this at most.
const askTimeout = 2 * time.Second

// retryPause is when a pass that could not finish (a server did not
// answer) runs again without waiting for the next Reconcile.
const retryPause = time.Second

func (c *group) init(sec *Security) {
	c.kick = make(chan struct{}, 1)
	c.names = map[string]string{}
	c.lastIndex = map[string]uint64{}
	c.polled = map[string]polled{}
	c.since = map[string]seen{}
	c.absent = map[string]time.Time{}
	// No keep-alives: an idle pooled connection would outlive the Node.
	// No proxy: servers talk to each other directly.
	// The dial is the port's: TLS when the port authenticates.
	c.client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil, DialContext: sec.DialContext}}
}

// Reconcile hands the Node gossip's newest view of the servers: self and
// the others (self may be among peers too). The agent calls it on every
// membership change and every few seconds. It does not block: the work is
// done by Run's loop, on the newest view.
//
// The loop asks other servers over the internal HTTP on their Addr (before
// bootstrapping, before adding them, and for their last index), so it
// needs every server to run on a ServerPort (Config.Port) that serves
// PeersHandler at PeersPath.
func (n *Node) Reconcile(self Peer, peers []Peer) {
	c := &n.group
	c.mu.Lock()
	c.have, c.self, c.peers = true, self, slices.Clone(peers)
	c.gen++
	for _, p := range append(c.peers, self) { // c.peers is ours to grow
		if p.ID != "" {
			c.names[p.ID] = p.Name
		}
	}
	c.mu.Unlock()
	c.wake()
}

func (c *group) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (n *Node) reconcileLoop(ctx context.Context) {
	c := &n.group
	defer c.client.CloseIdleConnections()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-timer.C:
		}
		again := n.reconcilePass(ctx)
		timer.Stop()
		if again > 0 {
			timer.Reset(again)
		}
	}
}

// reconcilePass answers when it wants to run again by itself (0: on the
// next Reconcile).
func (n *Node) reconcilePass(ctx context.Context) time.Duration {
	c := &n.group
	c.mu.Lock()
	have, self, peers, gen := c.have, c.self, c.peers, c.gen
	c.mu.Unlock()
	if !have {
		return 0
	}
	defer c.done.Store(gen)
	// This server is who it is, whatever the agent says.
	self.ID, self.Addr = n.cfg.ID, n.Addr()
	self.Status = registry.MemberAlive
	servers := []Peer{self}
	for _, p := range peers {
		if p.ID == "" || p.ID == self.ID {
			continue
		}
		if p.Addr == "" {
			n.log.Warn("raft: a server without an address is ignored", "node", p.Name, "id", p.ID)
			continue
		}
		servers = append(servers, p)
	}
	now := time.Now()
	n.trackSince(servers, now)

	var again time.Duration
	if !c.bootstrapped {
		again = n.maybeBootstrap(ctx, self, servers)
	}
	if n.raft.State() == hraft.Leader {
		again = minPositive(again, n.reconcileLeader(ctx, self, servers, now))
	} else {
		again = minPositive(again, n.announceMove(ctx, self, servers[1:]))
	}
	return again
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 || (b > 0 && b < a) {
		return b
	}
	return a
}

// trackSince remembers when each server entered its status, for the ones
// whose Since the agent did not give.
func (n *Node) trackSince(servers []Peer, now time.Time) {
	c := &n.group
	keep := map[string]bool{}
	for _, p := range servers {
		keep[p.ID] = true
		if s, ok := c.since[p.ID]; !ok || s.status != p.Status {
			c.since[p.ID] = seen{p.Status, now}
		}
	}
	for id := range c.since {
		if !keep[id] {
			delete(c.since, id)
		}
	}
}

func (n *Node) statusSince(p Peer) time.Time {
	if !p.Since.IsZero() {
		return p.Since
	}
	return n.group.since[p.ID].at
}

// maybeBootstrap starts a new group once the expected number of servers
// are alive and none of them is part of a group already (Consul's
// maybeBootstrap). Servers without an expect count and are in the list,
// as in Consul (they came to be added anyway); one that expects another
// number stops it: the operators meant different groups.
func (n *Node) maybeBootstrap(ctx context.Context, self Peer, servers []Peer) time.Duration {
	c := &n.group
	if n.raft.LastIndex() > 0 {
		c.bootstrapped = true
		if self.Expect > 0 {
			n.log.Info("raft: found Raft data, not bootstrapping")
		}
		return 0
	}
	if self.Expect <= 0 {
		return 0 // a leader adds it
	}
	var alive []Peer
	for _, p := range servers {
		if p.Status != registry.MemberAlive {
			continue
		}
		if p.Expect != 0 && p.Expect != self.Expect {
			if w := p.ID + "/" + strconv.Itoa(p.Expect); c.warned != w {
				c.warned = w
				n.log.Warn("raft: a server expects another number of servers, not bootstrapping; all should expect the same",
					"node", p.Name, "expects", p.Expect, "we expect", self.Expect)
			}
			return 0
		}
		alive = append(alive, p)
	}
	if len(alive) < self.Expect {
		return 0
	}
	// A server added much later with the same expect must not start a
	// second group: ask everyone first.
	for _, p := range alive {
		if p.ID == self.ID {
			continue
		}
		info, err := n.askPeers(ctx, p.Addr)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("raft: asking a server for its Raft peers before bootstrapping (will retry)", "node", p.Name, "err", err)
			}
			return retryPause
		}
		if len(info.Peers) > 0 {
			n.log.Info("raft: a server already has Raft peers, not bootstrapping", "node", p.Name)
			c.bootstrapped = true
			return 0
		}
	}
	slices.SortFunc(alive, func(a, b Peer) int { return strings.Compare(a.ID, b.ID) })
	var list []Server
	var names []string
	for _, p := range alive {
		list = append(list, Server{ID: p.ID, Address: p.Addr, Voter: true})
		names = append(names, p.Name)
	}
	// Every server computes the same list; Raft settles it if two lists
	// differ, and a server that already has state ignores the call.
	c.bootstrapped = true
	if err := n.Bootstrap(list); err != nil {
		n.log.Error("raft: bootstrapping", "err", err)
		return 0
	}
	n.log.Info("raft: bootstrapped", "servers", strings.Join(names, ","))
	return 0
}

// peersInfo is what PeersHandler answers.
type peersInfo struct {
	ID        string   // this server's Raft ID: who answers at this address
	Peers     []string // the addresses of this server's configuration
	LastIndex uint64
	LastTerm  uint64 // its current term, for autopilot's health (health.go)
}

// PeersHandler answers GET PeersPath on the servers' internal HTTP: this
// server's Raft configuration (Consul's Status.Peers) and its last log
// index, which another server asks before it bootstraps and the leader
// asks for RaftServers.
func (n *Node) PeersHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			n.serveMoved(w, r) // moved.go
			return
		}
		if r.Method != http.MethodGet {
			http.Error(w, "method must be GET or POST", http.StatusMethodNotAllowed)
			return
		}
		info := peersInfo{ID: n.cfg.ID, Peers: []string{}, LastIndex: n.raft.LastIndex(), LastTerm: n.raft.CurrentTerm()}
		cfg, err := n.Configuration()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		for _, s := range cfg {
			info.Peers = append(info.Peers, s.Address)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(info)
	})
}

func (n *Node) askPeers(ctx context.Context, addr string) (peersInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	var info peersInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+PeersPath, nil)
	if err != nil {
		return info, err
	}
	resp, err := n.group.client.Do(req)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return info, fmt.Errorf("%s answered %s", addr, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return info, fmt.Errorf("%s: %w", addr, err)
	}
	return info, nil
}
