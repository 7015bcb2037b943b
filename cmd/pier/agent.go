package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pier-dev/pier/health"
	"github.com/pier-dev/pier/history"
	"github.com/pier-dev/pier/metrics"
	"github.com/pier-dev/pier/proxy"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/api/ui"
	"github.com/pier-dev/pier/registry/dns"
	"github.com/pier-dev/pier/registry/docker"
	"github.com/pier-dev/pier/registry/gossip"
	"github.com/pier-dev/pier/registry/wan"
	"github.com/prometheus/client_golang/prometheus"
)

func runAgent(args []string, stdout, stderr io.Writer) error {
	f := newAgentFlags()
	if err := parseFlags(f.fs, args, stderr); err != nil {
		return err
	}
	if f.fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", f.fs.Arg(0))}
	}
	cfg, err := f.resolve()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return agent(ctx, cfg, stderr, nil, f.resolve)
}

// agent runs an agent until ctx ends. ready, if not nil, receives the HTTP
// API's addresses once every listener is open (tests use it).
//
// resolve, if not nil, reads the configuration again for a reload (SIGHUP,
// PUT /v1/agent/reload, pier reload); without it a reload is refused.
//
// It builds every part first, then opens every socket, and starts nothing
// until both succeeded: a bad setting or a port in use ends the agent before
// it joins the cluster.
func agent(ctx context.Context, cfg agentConfig, logOut io.Writer, ready chan<- []string, resolve func() (agentConfig, error)) error {
	// /v1/agent/leave ends the agent after it has left the cluster.
	ctx, leave := context.WithCancel(ctx)
	defer leave()
	a, err := build(cfg, logOut, resolve, leave)
	defer a.close()
	if err != nil {
		return err
	}
	if err := a.listen(); err != nil {
		return err
	}
	return a.run(ctx, ready)
}

// parts are an agent's components, built by build, given their sockets by
// listen and run by run.
type parts struct {
	cfg        agentConfig
	log        *slog.Logger // the agent's own lines
	addr       string       // advertised to other nodes
	met        *agentMetrics
	reg        *registry.Registry
	members    *gossip.Gossip
	servers    *servers // Raft: a server's node, or a client's view of the servers
	checks     *health.Runner
	srv        *api.Server
	rl         *reloader
	names      *dns.Server
	containers *docker.Watcher // nil without -docker
	door       *frontDoor      // nil unless this agent is a front door
	charts     *history.Store  // the UI's charts
	lns        *api.Listeners
}

// close releases what build and listen took that run has not.
func (a *parts) close() {
	if a.rl != nil {
		a.rl.stop()
	}
	if a.met != nil && a.met.ln != nil {
		a.met.ln.Close()
	}
	if a.door != nil {
		a.door.ln.Close()
		if a.door.tlsLn != nil {
			a.door.tlsLn.Close()
		}
		a.door.tcp.Close()
	}
	if a.lns != nil {
		a.lns.Close()
	}
	if a.servers != nil {
		a.servers.close()
	}
}

func build(cfg agentConfig, logOut io.Writer, resolve func() (agentConfig, error), leave context.CancelFunc) (*parts, error) {
	log, level, logs := newLogger(logOut, cfg.LogLevel, cfg.LogJSON)
	a := &parts{cfg: cfg, log: log.With("component", "agent")}
	for _, w := range cfg.Warnings {
		a.log.Warn(w)
	}
	var err error
	if a.met, err = newAgentMetrics(cfg.Metrics, log.With("component", "metrics")); err != nil {
		return a, err
	}
	prom := a.met.Registerer() // nil when telemetry.disable turns metrics off
	if a.addr, err = gossip.AdvertiseAddr(cfg.Bind, cfg.Advertise); err != nil {
		return a, err
	}
	if cfg.Dev && cfg.Advertise == "" {
		a.addr = "127.0.0.1"
	}
	if cfg.SerfLANPort == 0 {
		// The agent's own catalog entry names the gossip port, so pick it now.
		if a.cfg.SerfLANPort, err = gossip.FreePort(cfg.Bind); err != nil {
			return a, fmt.Errorf("gossip: %w", err)
		}
	}
	if a.reg, err = a.buildRegistry(log, prom); err != nil {
		return a, err
	}
	if a.servers, err = a.buildServers(log); err != nil {
		return a, err
	}
	if a.members, err = a.buildGossip(log, prom); err != nil {
		return a, err
	}
	a.servers.setGossip(a.members)
	if err := a.buildWAN(log); err != nil {
		return a, err
	}
	if a.checks, err = a.buildHealth(log, prom); err != nil {
		return a, err
	}
	if a.srv, err = a.buildAPI(log, logs, prom, leave); err != nil {
		return a, err
	}
	if a.rl, err = newReloader(resolve, a.reg, level, a.log); err != nil {
		return a, err
	}
	node := a.reg.Config().NodeName
	a.srv.HandlePerm("PUT /v1/agent/reload", a.rl, acl.AgentWrite(node))
	a.srv.HandlePerm("POST /v1/agent/reload", a.rl, acl.AgentWrite(node))
	if a.names, err = newDNS(a.cfg, a.reg, a.srv.ReaderAs("dns"), log, prom); err != nil {
		return a, err
	}
	if a.containers, err = newDockerWatcher(cfg.Docker, a.reg, a.addr, log); err != nil {
		return a, err
	}
	if p := cfg.Proxy; p != nil {
		p.lb.Registerer, p.proxy.Registerer = prom, prom
		p.proxy.Failover = a.srv.ReaderAs("agent") // other datacenters' instances, for routes with a failover
		if p.proxy.AccessLogTo == nil {
			p.proxy.AccessLogTo = logOut
		}
		ps := *p
		ps.proxy, _ = withACMEStorage(p.proxy, a.srv, a.reg, cfg.ACL.Agent, log)
		if a.door, err = newFrontDoor(&ps, a.reg, log); err != nil {
			return a, err
		}
		a.srv.Handle("GET /v1/pier/routes", a.door.proxy.RoutesHandler())
		a.srv.Handle("GET /v1/pier/tcp-routes", a.door.tcp.RoutesHandler())
	}
	if a.charts, err = a.buildCharts(log); err != nil {
		return a, err
	}
	return a, nil
}

func (a *parts) buildRegistry(log *slog.Logger, prom prometheus.Registerer) (*registry.Registry, error) {
	cfg := a.cfg
	rcfg := registry.DefaultConfig()
	rcfg.NodeName = cfg.Node
	rcfg.NodeID = cfg.NodeID
	rcfg.Version = version
	rcfg.Address = a.addr
	rcfg.Datacenter = cfg.Datacenter
	rcfg.NodeMeta = cfg.NodeMeta
	rcfg.Locality = cfg.Locality
	rcfg.DataDir = cfg.DataDir
	rcfg.AgentPort = cfg.SerfLANPort
	rcfg.Logger = log.With("component", "registry")
	rcfg.Registerer = prom
	rcfg.KVMaxBytes = cfg.KVMaxBytes
	reg, err := registry.New(rcfg)
	if err != nil {
		return nil, err
	}
	if _, err := reg.SyncConfigServices(cfg.Services); err != nil {
		return nil, err
	}
	// Checks saved on config services (maintenance) need those services.
	reg.RestorePersistedChecks()
	return reg, nil
}

func (a *parts) buildGossip(log *slog.Logger, prom prometheus.Registerer) (*gossip.Gossip, error) {
	cfg := a.cfg
	gcfg := gossip.DefaultConfig()
	gcfg.Registry = a.reg
	gcfg.BindAddr = cfg.Bind
	gcfg.BindPort = cfg.SerfLANPort
	gcfg.AdvertiseAddr = a.addr
	gcfg.StartJoin = cfg.StartJoin
	gcfg.RetryJoin = cfg.RetryJoin
	gcfg.RetryMax = cfg.RetryMax
	gcfg.ReconnectTimeout = cfg.Reconnect
	gcfg.Tags = map[string]string{"dc": cfg.Datacenter, "role": "node", "build": version, "id": a.reg.Config().NodeID}
	maps.Copy(gcfg.Tags, a.servers.tags(a.reg.Config().NodeID))
	gcfg.Logger = log.With("component", "gossip")
	gcfg.Registerer = prom
	gcfg.KeyringFile = cfg.keyringFile()
	if cfg.Encrypt != "" {
		var err error
		if gcfg.EncryptKey, err = gossip.ParseKey(cfg.Encrypt); err != nil {
			return nil, err
		}
	}
	return gossip.New(gcfg)
}

func (a *parts) buildHealth(log *slog.Logger, prom prometheus.Registerer) (*health.Runner, error) {
	hcfg := health.DefaultConfig()
	hcfg.Catalog = a.reg
	hcfg.EnableScriptChecks = a.cfg.EnableScriptChecks
	if a.cfg.EnableScriptChecks {
		var err error
		if hcfg.Docker, err = newDockerExec(a.cfg.Docker); err != nil {
			return nil, err
		}
	}
	hcfg.Logger = log.With("component", "health")
	hcfg.Registerer = prom
	return health.New(hcfg)
}

func (a *parts) buildAPI(log *slog.Logger, logs *api.LogStream, prom prometheus.Registerer, leave context.CancelFunc) (*api.Server, error) {
	cfg := a.cfg
	acfg := api.DefaultConfig()
	acfg.Registry = a.reg
	acfg.Cluster = cluster{a.members, a.servers.wan, leave}
	acfg.Consensus = a.servers
	if a.servers.wan != nil {
		acfg.WAN = a.servers.wan
	}
	acfg.ServerDial = a.servers.dial
	acfg.Health = a.checks
	acfg.EnableScriptChecks = cfg.EnableScriptChecks
	acfg.EnableDebug = cfg.EnableDebug
	acfg.Logs = logs
	acfg.Version = version
	acfg.Logger = log.With("component", "api")
	acfg.Registerer = prom
	acfg.ACL = cfg.ACL
	if cfg.DataDir != "" {
		acfg.ACL.BootstrapResetFile = filepath.Join(cfg.DataDir, "acl-bootstrap-reset") // Consul's name
	}
	acfg.Settings = debugSettings(cfg)
	if cfg.ACLTokenPersistence {
		if cfg.DataDir == "" {
			a.log.Warn("acl.enable_token_persistence is set but there is no data dir (-dev): tokens set through the API last until the agent stops")
		} else {
			acfg.ACL.TokenFile = filepath.Join(cfg.DataDir, "acl-tokens.json")
		}
	}
	acfg.MaxConnsPerClient = cfg.HTTPMaxConnsPerClient
	if acfg.MaxConnsPerClient == 0 {
		acfg.MaxConnsPerClient = -1 // limits.http_max_conns_per_client: 0 is no limit, as in Consul
	}
	srv, err := api.New(acfg)
	if err != nil {
		return nil, err
	}
	node := a.reg.Config().NodeName
	if a.met.handler != nil {
		srv.Handle("GET /metrics", a.met.handler)
		consulJSON := metrics.ConsulHandler(a.met.reg, log)
		srv.HandlePerm("GET /v1/agent/metrics", consulJSON, acl.AgentRead(node))
		srv.HandlePerm("GET /v1/agent/metrics/stream", metrics.ConsulStreamHandler(consulJSON, 10*time.Second, log), acl.AgentRead(node))
	}
	srv.Handle("GET /ui/", ui.Handler("/ui/"))
	srv.Handle("GET /ui", ui.Redirect())
	return srv, nil
}

// buildCharts keeps the last 15 minutes of every route, service and node
// for the web UI. The endpoint filters what it answers by the token, so it
// asks for none itself; validating a route reads nothing stored.
func (a *parts) buildCharts(log *slog.Logger) (*history.Store, error) {
	hcfg := history.DefaultConfig()
	hcfg.Sources = []history.Source{history.Catalog{Snapshot: a.reg.Snapshot}}
	if a.door != nil {
		hcfg.Sources = append(hcfg.Sources, a.door.proxy)
	}
	hcfg.Logger = log.With("component", "history")
	st, err := history.New(hcfg)
	if err != nil {
		return nil, err
	}
	a.srv.HandlePerm("GET /v1/pier/history", st.Handler(), acl.Anyone)
	a.srv.HandlePerm("PUT /v1/pier/validate/route", proxy.ValidateRouteHandler(), acl.Anyone)
	a.srv.HandlePerm("POST /v1/pier/validate/route", proxy.ValidateRouteHandler(), acl.Anyone)
	a.srv.HandlePerm("PUT /v1/pier/validate/tcp-route", proxy.ValidateTCPRouteHandler(), acl.Anyone)
	a.srv.HandlePerm("POST /v1/pier/validate/tcp-route", proxy.ValidateTCPRouteHandler(), acl.Anyone)
	return st, nil
}

// listen opens the API's and DNS's sockets (the proxy's and the metrics'
// were opened by build).
func (a *parts) listen() error {
	var err error
	if a.lns, err = api.Listen(a.cfg.Client, a.cfg.HTTPPort, a.cfg.TLS); err != nil {
		return err
	}
	return a.names.Listen()
}

// run runs every part under one errgroup until ctx ends or one fails.
func (a *parts) run(ctx context.Context, ready chan<- []string) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { a.rl.onSIGHUP(gctx); return nil })
	g.Go(func() error { return a.members.Run(gctx) })
	g.Go(func() error { return a.checks.Run(gctx) })
	a.servers.run(gctx, g, a.reg, a.srv)
	g.Go(func() error { return a.names.Run(gctx) })
	g.Go(func() error { return a.charts.Run(gctx) })
	if a.containers != nil {
		g.Go(func() error { return a.containers.Run(gctx) })
	}
	if a.met.ln != nil {
		g.Go(func() error { return a.met.run(gctx) })
	}
	proxyAddr, proxyTLSAddr := "", ""
	if d := a.door; d != nil {
		proxyAddr = d.ln.Addr().String()
		g.Go(func() error { return d.bal.Run(gctx) })
		g.Go(func() error { return d.proxy.Run(gctx, d.ln) })
		g.Go(func() error { return d.proxy.RunFailover(gctx) })
		g.Go(func() error { return d.tcp.Run(gctx) })
		if d.tlsLn != nil {
			proxyTLSAddr = d.tlsLn.Addr().String()
			g.Go(func() error { return d.proxy.RunTLS(gctx, d.tlsLn) })
			g.Go(func() error { return d.proxy.RunACME(gctx, d.ln.Addr(), d.tlsLn.Addr()) })
		}
	}
	for _, ln := range a.lns.All() {
		g.Go(func() error { return a.srv.Run(gctx, ln) })
	}
	a.warnExposedAPI()
	cfg := a.cfg
	bound := api.Addrs(a.lns.HTTP)
	a.log.Info("pier agent running", "version", version, "node", cfg.Node, "address", a.addr,
		"datacenter", cfg.Datacenter, "http", strings.Join(bound, ","), "https", strings.Join(api.Addrs(a.lns.HTTPS), ","),
		"dns", dnsAddrs(a.names), "gossip", a.members.Addr(), "wan", a.servers.wanAddr(), "server", a.servers.addr(), "proxy", proxyAddr, "proxy_tls", proxyTLSAddr,
		"dev", cfg.Dev, "data_dir", cfg.DataDir, "metrics", a.met.addr())
	if ready != nil {
		ready <- bound
	}
	err := g.Wait()
	a.log.Info("pier agent stopped")
	return err
}

// warnExposedAPI says, at start, when the API is reachable from other hosts
// and whether ACLs guard it.
func (a *parts) warnExposedAPI() {
	for _, h := range a.cfg.Client {
		ip := net.ParseIP(h)
		switch {
		case ip == nil || ip.IsLoopback():
		case a.cfg.ACL.Enabled:
			a.log.Info("the HTTP API listens on a non-loopback address; ACLs are on", "addr", h)
		default:
			a.log.Warn("SECURITY: the HTTP API listens on a non-loopback address with ACLs off: anyone who reaches it can register services and route the front door's traffic; enable acl in the config", "addr", h)
		}
	}
}

// cluster is the API's view of the gossip layer; leaving also stops the agent.
type cluster struct {
	*gossip.Gossip
	wan  *wan.Pool // a server's WAN pool, left with the LAN pool; nil on a client
	stop context.CancelFunc
}

// KeyringOp runs a gossip key operation on every node for the API.
func (c cluster) KeyringOp(op, key string) ([]api.KeyringAnswer, error) {
	rs, err := c.Gossip.Keyring(op, key)
	out := make([]api.KeyringAnswer, 0, len(rs))
	for _, r := range rs {
		out = append(out, api.KeyringAnswer(r))
	}
	return out, err
}

// FireEvent and Events carry Consul's user events for the API.
func (c cluster) FireEvent(e api.UserEvent) (api.UserEvent, error) {
	out, err := c.Gossip.FireEvent(gossip.UserEvent(e))
	return api.UserEvent(out), err
}

func (c cluster) Events() ([]api.UserEvent, <-chan struct{}) {
	evs, changed := c.Gossip.Events()
	out := make([]api.UserEvent, len(evs))
	for i, e := range evs {
		out[i] = api.UserEvent(e)
	}
	return out, changed
}

func (c cluster) Leave() error {
	var err error
	if c.wan != nil {
		err = c.wan.Leave()
	}
	err = errors.Join(err, c.Gossip.Leave())
	c.stop()
	return err
}

// newLogger returns the agent's logger, the level it logs at, which a
// reload may change, and the stream /v1/agent/monitor reads it from.
func newLogger(w io.Writer, level string, asJSON bool) (*slog.Logger, *slog.LevelVar, *api.LogStream) {
	lv := new(slog.LevelVar)
	lv.Set(parseLevel(level))
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if asJSON {
		h = slog.NewJSONHandler(w, opts)
	}
	ls := api.NewLogStream(h)
	return slog.New(ls), lv, ls
}

func parseLevel(level string) slog.Level {
	switch strings.ToLower(level) {
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
