package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/gossip"
	"github.com/pier-dev/pier/registry/raft"
	"github.com/pier-dev/pier/registry/wan"
)

// servers is this agent's part in the servers' agreement (api.Consensus).
// A server runs a Raft node on its server port; a client holds no Raft
// state and knows the servers only from their gossip tags.
type servers struct {
	node    *raft.Node       // nil on a client
	port    *raft.ServerPort // nil on a client
	members *gossip.Gossip   // set once gossip is built
	wan     *wan.Pool        // the WAN pool; nil on a client
	// sec is how the server port authenticates (agent_tls.go), on a
	// client too: it dials the servers' ports. nil: plain.
	sec *raft.Security
	// keys holds gossip once it is built, for the keyring's identities.
	keys    atomic.Pointer[gossip.Gossip]
	dc      string
	expect  int
	log     *slog.Logger
	running bool // run took charge of the node and the port
}

// Node is the server's Raft node; nil on a client.
func (s *servers) Node() *raft.Node { return s.node }

// Servers answers the server ports of this datacenter's alive servers.
func (s *servers) Servers() []string {
	var out []string
	for _, m := range s.members.MembersTagged(raft.TagRole, raft.RoleServer) {
		if p, ok := raft.PeerFromMember(m, s.dc); ok && m.Status == registry.MemberAlive {
			out = append(out, p.Addr)
		}
	}
	return out
}

// buildServers opens a server's port and Raft node. It runs before gossip
// is built, whose tags carry the port.
func (a *parts) buildServers(log *slog.Logger) (*servers, error) {
	cfg := a.cfg
	s := &servers{dc: cfg.Datacenter, expect: cfg.Server.BootstrapExpect, log: log.With("component", "raft")}
	var err error
	if s.sec, err = serverPortSecurity(cfg, s.keySource, s.log); err != nil {
		return nil, err
	}
	if !cfg.Server.On {
		return s, nil
	}
	// Other servers dial gossip's address with the port tag, so the port
	// is advertised on the same address.
	bind := net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.Server.Port))
	if s.port, err = raft.ListenServerPort(bind, a.addr, s.sec); err != nil {
		return nil, err
	}
	rc := raft.DefaultConfig()
	rc.ID = a.reg.Config().NodeID
	rc.DataDir = cfg.DataDir // "" with -dev: in memory
	rc.LogStore = cfg.Server.LogStore
	rc.WALSegmentSize = cfg.Server.WALSegmentSize
	rc.Port = s.port
	rc.Logger = s.log
	rc.CleanupDeadServers = 0
	if cfg.Server.CleanupDeadServers {
		rc.CleanupDeadServers = cfg.Server.DeadServerTimeout
	}
	if s.node, err = raft.New(rc); err != nil {
		s.port.Close()
		return nil, err
	}
	return s, nil
}

// buildWAN binds a server's WAN pool, encrypted with the LAN pool's
// keyring (so a key rotation covers both); a client has none.
func (a *parts) buildWAN(log *slog.Logger) error {
	s := a.servers
	if s.node == nil {
		return nil
	}
	cfg := a.cfg
	wc := wan.Config{
		NodeName: a.reg.Config().NodeName, Datacenter: cfg.Datacenter,
		BindAddr: cfg.Bind, BindPort: cfg.Server.WANPort, AdvertiseAddr: a.addr,
		Keyring:   a.members.MemberlistKeyring(),
		StartJoin: cfg.Server.JoinWAN, RetryJoin: cfg.Server.RetryJoinWAN, RetryMax: cfg.RetryMax,
		Timings: cfg.Server.WANTimings,
		Logger:  log.With("component", "wan"),
	}
	wc.Tags = raft.ServerTags(a.reg.Config().NodeID, s.port.Addr(), 0)
	wc.Tags["build"] = version
	var err error
	s.wan, err = wan.New(wc)
	return err
}

// wanAddr is the WAN pool's address, for the start line; "" on a client.
func (s *servers) wanAddr() string {
	if s.wan == nil {
		return ""
	}
	return s.wan.Addr()
}

// keySource answers gossip's keyring for the server port's identities; not
// ok until gossip is built.
func (s *servers) keySource() (primary []byte, keys [][]byte, ok bool) {
	g := s.keys.Load()
	if g == nil {
		return nil, nil, false
	}
	primary, keys = g.Keys()
	return primary, keys, true
}

// setGossip hands the servers the built gossip.
func (s *servers) setGossip(g *gossip.Gossip) {
	s.members = g
	s.keys.Store(g)
}

// dial dials a server port as this agent's security says.
func (s *servers) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return s.sec.DialContext(ctx, network, addr)
}

// tags are the gossip tags that make this agent a server to the others.
func (s *servers) tags(id string) map[string]string {
	if s.node == nil {
		return nil
	}
	return raft.ServerTags(id, s.port.Addr(), s.expect)
}

// run runs a server's Raft node, its server port's HTTP (the API's Raft
// routes, the peers check and the mirror), the mirror into the registry,
// session health and the following of gossip; on a client, the mirror of a
// server's agreed state.
func (s *servers) run(ctx context.Context, g *errgroup.Group, reg *registry.Registry, srv *api.Server) {
	if s.node == nil {
		g.Go(func() error {
			return raft.FollowMirror(ctx, s.Servers, reg, &http.Client{Transport: &http.Transport{DialContext: s.dial}}, s.log)
		})
		return
	}
	s.running = true
	mux := http.NewServeMux()
	mux.Handle(raft.PeersPath, s.node.PeersHandler())
	mux.Handle(raft.MirrorPath, raft.MirrorHandler(s.node))
	mux.Handle("/", srv.ServerPortHandler())
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	self := raft.Peer{ID: s.node.ID(), Name: reg.Config().NodeName, Addr: s.port.Addr(), Expect: s.expect, Status: registry.MemberAlive}
	g.Go(func() error {
		err := s.node.Run(ctx)
		// Raft is down: now the port's HTTP side and the port itself.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
		s.port.Close()
		return err
	})
	g.Go(func() error {
		if err := hs.Serve(s.port.HTTP()); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error { return srv.ServeForwards(ctx, s.port.Forwards(), mux) })
	g.Go(func() error { return raft.RunMirror(ctx, s.node, reg) })
	g.Go(func() error { return s.wan.Run(ctx) })
	// The KV of the gossip era, kept in this server's data dir, moves into
	// Raft once per cluster.
	old := reg.Snapshot().GossipKV()
	g.Go(func() error { return s.node.RunImportGossipKV(ctx, old) })
	g.Go(func() error { return api.RunSessionHealth(ctx, s.node, reg) })
	g.Go(func() error { return srv.RunACLReplication(ctx) }) // in a secondary datacenter, on its leader
	g.Go(func() error {
		return s.node.FollowMembers(ctx, self, s.members.Members, reg, s.dc, 5*time.Second)
	})
}

// addr is the server port's address, for the start line; "" on a client.
func (s *servers) addr() string {
	if s.port == nil {
		return ""
	}
	return s.port.Addr()
}

// close stops a node that run never started (the agent failed to start).
func (s *servers) close() {
	if s.node == nil || s.running {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.node.Run(ctx) // with ctx done, it shuts Raft down and returns
	s.port.Close()
}
