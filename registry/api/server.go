package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/api/answer"
)

// Cluster is what the API needs from the gossip layer. Without one, the agent
// is a cluster of one and the join/leave endpoints answer 501.
type Cluster interface {
	Members() []registry.Member
	// Join contacts the given addresses and returns how many answered.
	Join(addrs []string) (int, error)
	// Leave leaves the cluster gracefully and shuts the agent down.
	Leave() error
	// ForceLeave marks a failed node as left at once.
	ForceLeave(node string) error
	// Prune removes a node from the member list, at once if it is no
	// longer alive, else once it is gone (force-leave's ?prune).
	Prune(node string) error
}

// Config configures a Server. It is frozen after New.
type Config struct {
	Registry    *registry.Registry // required
	Cluster     Cluster            // nil: this node alone
	Version     string             // shown by /v1/agent/self and pier version
	Logger      *slog.Logger       // nil: discard
	MaxBodySize int64              // request bodies above it get 413; default 1 MiB
	DefaultWait time.Duration      // blocking query wait when none is given; default 5m, as Consul
	MaxWait     time.Duration      // upper bound on a requested wait; default 10m, as Consul
	// MaxConnsPerClient bounds the requests one client IP has in progress
	// at once (blocking queries above all); the next gets 429. Consul's
	// limits.http_max_conns_per_client. Default 200, as Consul; negative:
	// no limit (limits.go).
	MaxConnsPerClient int
	// Health restarts TTLs on /v1/agent/check/pass|warn|fail|update; nil:
	// those endpoints only record the status (nothing expires).
	Health Health
	// EnableScriptChecks accepts checks with Args at registration, as
	// Consul's enable_script_checks; otherwise they are refused with 400.
	EnableScriptChecks bool
	// Settings are more of the agent's settings for DebugConfig in
	// /v1/agent/self, under the names of Consul's RuntimeConfig (the
	// agent's wiring fills them; agent.go adds those the registry knows).
	Settings map[string]any
	// ACL is the acl stanza: when enabled, every /v1/ request needs a token
	// allowed to do what it asks (acl.go).
	ACL ACLConfig
	// EnableDebug serves Go's profiles under /debug/pprof/ (Consul's
	// enable_debug); with ACLs on they are served either way, to tokens
	// with operator:read, as Consul does.
	EnableDebug bool
	// Logs is the agent's log handler, which /v1/agent/monitor streams
	// from; nil: that endpoint answers 501.
	Logs *LogStream
	// Consensus serves the KV store, sessions, txn, status, operator raft
	// and snapshots from the servers' Raft state (consensus.go); nil: the
	// KV store is gossip's, last writer wins, and the rest answer 404.
	Consensus Consensus
	// ServerDial dials a server port for forwarded requests: the port's
	// TLS when it authenticates (raft.Security.DialContext); nil: plain TCP.
	ServerDial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RPCHoldTimeout is how long a request that needs the leader waits for
	// one during an election before it answers 500 No cluster leader.
	RPCHoldTimeout time.Duration // default 7s, as Consul's rpc_hold_timeout
	// WAN is the servers' WAN pool, on a server (datacenters.go); nil on a
	// client and a lone agent: ?dc= another datacenter then goes to a
	// server, or answers 500 No path to datacenter.
	WAN WAN

	Registerer prometheus.Registerer // nil: no metrics
}

// DefaultConfig returns the limits a Consul user expects.
func DefaultConfig() Config {
	return Config{
		MaxBodySize: 1 << 20,
		DefaultWait: 5 * time.Minute,
		MaxWait:     10 * time.Minute,

		MaxConnsPerClient: 200,
		RPCHoldTimeout:    7 * time.Second,
	}
}

// Server is the HTTP API of one agent.
type Server struct {
	cfg Config
	reg *registry.Registry
	log *slog.Logger
	mux *lazyMux
	// perms is each pattern's permission (route.go); filled by New
	// and Handle, read by the gate.
	perms map[string]route
	met   *apiMetrics    // nil: no metrics
	acl   *Authorizer    // nil: ACLs off
	lim   *clientLimiter // nil: no per-client limit

	cache *agentCache // ?cached (cache.go)
	// templates keeps the prepared-query templates compiled
	// (query_template.go).
	templates templateCache

	// inner routes what the server port serves (ServerPortHandler): the
	// Raft-backed endpoints only; nil without Consensus.
	inner *lazyMux
	fwd   *frames // forwarded requests: writes in frames (forward.go), the rest over pooled HTTP connections (consensus.go)
	// wanFwd carries requests to other datacenters (datacenters.go).
	wanFwd *http.Transport
	// fwdBufs lends the forwarding proxies their copy buffers.
	fwdBufs copyBuffers
}

// New validates cfg and builds the handler.
func New(cfg Config) (*Server, error) {
	if cfg.Registry == nil {
		return nil, errors.New("api: a registry is required")
	}
	def := DefaultConfig()
	if cfg.MaxBodySize <= 0 {
		cfg.MaxBodySize = def.MaxBodySize
	}
	if cfg.DefaultWait <= 0 {
		cfg.DefaultWait = def.DefaultWait
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = def.MaxWait
	}
	if cfg.MaxConnsPerClient == 0 {
		cfg.MaxConnsPerClient = def.MaxConnsPerClient
	}
	if cfg.RPCHoldTimeout <= 0 {
		cfg.RPCHoldTimeout = def.RPCHoldTimeout
	}
	s := &Server{cfg: cfg, reg: cfg.Registry, log: cfg.Logger, mux: &lazyMux{}, perms: map[string]route{}, lim: newClientLimiter(cfg.MaxConnsPerClient), cache: newAgentCache()}
	if cfg.Consensus != nil {
		s.inner, s.fwd = &lazyMux{}, newFrames(cfg.ServerDial, 10*time.Second, cfg.MaxBodySize)
	}
	if cfg.WAN != nil {
		// Another datacenter's server port, dialled as this one's (its TLS
		// or keyring identities), with a short dial: a WAN cut that drops
		// packets shows as a dial that never answers.
		s.wanFwd = newForwarder(cfg.ServerDial, wanDial)
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var err error
	if s.met, err = newMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("api: metrics: %w", err)
	}
	if s.acl, err = NewAuthorizer(cfg.ACL); err != nil {
		return nil, err
	}
	if s.acl != nil {
		if err := s.acl.Attach(s.reg, s.log); err != nil { // tokens made through /v1/acl live in the KV store
			return nil, err
		}
		if cfg.Consensus != nil {
			s.acl.SetWriter(raftACLWriter{cfg.Consensus}) // and with servers, in their Raft state
			s.acl.SetPrimary(primaryLink{s})              // replicated from the primary datacenter (acl_replication.go)
		}
	}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	s.writes("/v1/agent/service/register", s.serviceRegister, s.mayRegisterService)
	s.writes("/v1/agent/service/deregister/{id...}", s.serviceDeregister, s.serviceIDWrite)
	s.writes("/v1/agent/check/register", s.checkRegister, s.mayRegisterCheck)
	s.writes("/v1/agent/check/deregister/{id...}", s.checkDeregister, s.checkIDWrite)
	s.route("GET /v1/agent/services", s.agentServices, acl.Anyone) // filtered
	s.route("GET /v1/agent/service/{id...}", s.agentService, s.serviceIDRead)
	s.route("GET /v1/agent/checks", s.agentChecks, acl.Anyone) // filtered
	s.route("GET /v1/agent/self", s.agentSelf, s.agentRead)
	s.route("GET /v1/agent/version", s.agentVersion, acl.Anyone) // none in Consul either
	s.route("GET /v1/agent/members", s.agentMembers, anyNodeRead)
	s.checkRoutes() // TTL updates, maintenance, agent health (checks.go)
	if s.cfg.Consensus != nil {
		s.raftRoutes()  // KV, sessions, txn, operator raft, snapshots on Raft (raftkv.go)
		s.queryRoutes() // prepared queries (query.go)
		s.acmeRoutes()  // the front door's ACME certificates and locks (acme.go)
	} else {
		s.kvRoutes() // the gossip KV store (kv.go)
	}
	s.keyringRoutes() // gossip key rotation (keyring.go)
	s.eventRoutes()   // user events (event.go)
	s.aclRoutes()     // tokens, policies and roles (registry/acl)
	s.debugRoutes()   // host facts, profiles (agent_debug.go)
	s.writes("/v1/agent/join/{addr...}", s.agentJoin, s.agentWrite)
	s.writes("/v1/agent/leave", s.agentLeave, s.nodeAndAgentWrite)
	s.writes("/v1/agent/force-leave/{node...}", s.agentForceLeave, operatorWrite)

	s.route("GET /v1/catalog/services", s.cached(s.catalogServices), acl.Anyone) // filtered
	s.route("GET /v1/catalog/service/{name}", s.cached(s.catalogService), serviceRead)
	s.route("GET /v1/catalog/nodes", s.catalogNodes, anyNodeRead)
	s.route("GET /v1/catalog/node/{node}", s.catalogNode, nodeRead)
	s.route("GET /v1/catalog/node-services/{node}", s.catalogNodeServiceList, nodeRead)
	s.raftRoute("GET /v1/catalog/datacenters", s.catalogDatacenters, acl.Anyone)

	s.route("GET /v1/health/service/{name}", s.cached(s.healthService), serviceRead)
	s.route("GET /v1/health/checks/{name}", s.healthChecks, serviceRead)
	s.route("GET /v1/health/node/{node}", s.healthNode, nodeRead)
	s.route("GET /v1/health/state/{state}", s.healthState, acl.Anyone) // filtered

	s.coordinateRoutes() // network coordinates (coordinate.go)

	s.raftRoute("GET /v1/status/leader", s.statusLeader, acl.Anyone)
	s.raftRoute("GET /v1/status/peers", s.statusPeers, acl.Anyone)
	s.unsupportedRoutes()
}

// ServeHTTP makes Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.limit(w, r, s.serve)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	// Every answer says it knows its leader: pier has no leader election to
	// wait for, and Consul's clients treat a false value as an outage.
	h := w.Header()
	h.Set("X-Consul-KnownLeader", "true")
	h.Set("X-Consul-LastContact", "0")
	// Blocking endpoints replace this with the index of their own answer.
	h.Set("X-Consul-Index", strconv.FormatUint(s.reg.Snapshot().Index(), 10))
	if s.refuseRemoteExec(w, r) { // consul exec (rexec.go)
		return
	}
	// Another datacenter's request is checked there, against its ACLs.
	if s.toDatacenter(w, r) {
		return
	}
	if s.acl != nil {
		var ok bool
		if r, ok = s.authorize(w, r); !ok {
			return
		}
	}
	s.met.serve(s.mux, w, r)
}

// ServerPortHandler serves what a server's port carries besides Raft (its
// internal HTTP, the address other agents forward to): the Raft-backed
// endpoints only, with the same ACL gate, and without the per-client limit
// (every request of a client agent comes from its one address). Without
// Consensus it answers 404.
func (s *Server) ServerPortHandler() http.Handler {
	if s.inner == nil {
		return http.NotFoundHandler()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Consul-KnownLeader", "true")
		h.Set("X-Consul-LastContact", "0")
		if s.refuseRemoteExec(w, r) || s.toDatacenter(w, r) {
			return
		}
		if s.acl != nil {
			var ok bool
			if r, ok = s.authorize(w, r); !ok { // the main mux holds every route's permission
				return
			}
		}
		// A request from another datacenter may be for any federated
		// endpoint, catalog and health included.
		var mux http.Handler = s.inner
		if r.Header.Get(dcHeader) != "" && federated(r.URL.Path) {
			mux = s.mux
		}
		s.met.serve(mux, w, r)
	})
}

// Run serves on ln until ctx ends, then shuts down: open blocking queries
// end at once (their request contexts derive from ctx) and other requests
// get a few seconds to finish.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	// Connections that have not sent a request yet (a client's spare pooled
	// connection, a load balancer's TCP probe) would hold Shutdown for its
	// whole timeout and make it fail; they are closed once Serve stops
	// accepting.
	var mu sync.Mutex
	fresh := map[net.Conn]struct{}{}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		if st == http.StateNew {
			fresh[c] = struct{}{}
		} else {
			delete(fresh, c)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("api: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(sctx) }()
	<-errc // Serve has returned: no connection is accepted any more
	mu.Lock()
	for c := range fresh {
		c.Close()
	}
	mu.Unlock()
	err := <-shut
	if s.fwd != nil {
		s.fwd.CloseIdleConnections()
	}
	if s.wanFwd != nil {
		s.wanFwd.CloseIdleConnections()
	}
	if err != nil {
		return fmt.Errorf("api: shutdown: %w", err)
	}
	return nil
}

// writeJSON, httpError and writeError are this package's short names for
// registry/api/answer's, which the API and the ACL endpoints share.
func writeJSON(w http.ResponseWriter, r *http.Request, v any) { answer.JSON(w, r, v) }

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	answer.Error(w, code, format, args...)
}

// readBody reads a request body up to the configured limit; false means an
// error answer was sent.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodySize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			httpError(w, http.StatusRequestEntityTooLarge, "Request body too large: limit is %d bytes", mbe.Limit)
		} else {
			httpError(w, http.StatusBadRequest, "Reading request body: %v", err)
		}
		return nil, false
	}
	return b, true
}

func writeError(w http.ResponseWriter, prefix string, err error) { answer.StoreError(w, prefix, err) }
