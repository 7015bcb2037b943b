package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pier-dev/pier/health"
	"github.com/pier-dev/pier/metrics"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/api/ui"
	"github.com/pier-dev/pier/registry/gossip"
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
func agent(ctx context.Context, cfg agentConfig, logOut io.Writer, ready chan<- []string, resolve func() (agentConfig, error)) error {
	log, level, logs := newLogger(logOut, cfg.LogLevel, cfg.LogJSON)
	agentLog := log.With("component", "agent")
	for _, w := range cfg.Warnings {
		agentLog.Warn(w)
	}
	met, err := newAgentMetrics(cfg.Metrics, log.With("component", "metrics"))
	if err != nil {
		return err
	}
	if met.ln != nil {
		defer met.ln.Close()
	}
	prom := met.Registerer() // nil when telemetry.disable turns metrics off
	addr, err := cfg.advertiseAddr()
	if err != nil {
		return err
	}
	if cfg.Dev && cfg.Advertise == "" {
		addr = "127.0.0.1"
	}
	// /v1/agent/leave ends the agent after it has left the cluster.
	ctx, leave := context.WithCancel(ctx)
	defer leave()
	if cfg.SerfLANPort == 0 {
		// The agent's own catalog entry names the gossip port, so pick it now.
		if cfg.SerfLANPort, err = gossip.FreePort(cfg.Bind); err != nil {
			return fmt.Errorf("gossip: %w", err)
		}
	}

	rcfg := registry.DefaultConfig()
	rcfg.NodeName = cfg.Node
	rcfg.NodeID = cfg.NodeID
	rcfg.Version = version
	rcfg.Address = addr
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
		return err
	}
	for _, ss := range cfg.Services {
		if err := reg.RegisterService(ss.Service, ss.Checks, registry.SourceConfig); err != nil {
			return fmt.Errorf("config file %s: service %q: %w", ss.File, ss.Service.ID, err)
		}
	}
	// Checks saved on config services (maintenance) need those services.
	reg.RestorePersistedChecks()

	gcfg := gossip.DefaultConfig()
	gcfg.Registry = reg
	gcfg.BindAddr = cfg.Bind
	gcfg.BindPort = cfg.SerfLANPort
	gcfg.AdvertiseAddr = addr
	gcfg.StartJoin = cfg.StartJoin
	gcfg.RetryJoin = cfg.RetryJoin
	gcfg.RetryMax = cfg.RetryMax
	gcfg.ReconnectTimeout = cfg.Reconnect
	gcfg.Tags = map[string]string{"dc": cfg.Datacenter, "role": "node", "build": version, "id": reg.Config().NodeID}
	gcfg.Logger = log.With("component", "gossip")
	gcfg.Registerer = prom
	if cfg.DataDir != "" {
		gcfg.KeyringFile = filepath.Join(cfg.DataDir, "keyring.json")
	}
	if cfg.Encrypt != "" {
		if gcfg.EncryptKey, err = gossip.ParseKey(cfg.Encrypt); err != nil {
			return err
		}
	}
	members, err := gossip.New(gcfg)
	if err != nil {
		return err
	}

	hcfg := health.DefaultConfig()
	hcfg.Catalog = reg
	hcfg.EnableScriptChecks = cfg.EnableScriptChecks
	if cfg.EnableScriptChecks {
		if hcfg.Docker, err = newDockerExec(cfg.Docker); err != nil {
			return err
		}
	}
	hcfg.Logger = log.With("component", "health")
	hcfg.Registerer = prom
	checks, err := health.New(hcfg)
	if err != nil {
		return err
	}

	acfg := api.DefaultConfig()
	acfg.Registry = reg
	acfg.Cluster = cluster{members, leave}
	acfg.Health = checks
	acfg.EnableScriptChecks = cfg.EnableScriptChecks
	acfg.EnableDebug = cfg.EnableDebug
	acfg.Logs = logs
	acfg.Version = version
	acfg.Logger = log.With("component", "api")
	acfg.Registerer = prom
	acfg.ACL = cfg.ACL
	acfg.Settings = debugSettings(cfg)
	if cfg.ACLTokenPersistence {
		if cfg.DataDir == "" {
			agentLog.Warn("acl.enable_token_persistence is set but there is no data dir (-dev): tokens set through the API last until the agent stops")
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
		return err
	}
	if met.handler != nil {
		srv.Handle("GET /metrics", met.handler)
		consulJSON := metrics.ConsulHandler(met.reg, log)
		srv.HandlePerm("GET /v1/agent/metrics", consulJSON, acl.AgentRead(reg.Config().NodeName))
		srv.HandlePerm("GET /v1/agent/metrics/stream", metrics.ConsulStreamHandler(consulJSON, 10*time.Second, log), acl.AgentRead(reg.Config().NodeName))
	}
	rl, err := newReloader(resolve, reg, level, agentLog)
	if err != nil {
		return err
	}
	defer rl.stop()
	srv.HandlePerm("PUT /v1/agent/reload", rl, acl.AgentWrite(reg.Config().NodeName))
	srv.HandlePerm("POST /v1/agent/reload", rl, acl.AgentWrite(reg.Config().NodeName))
	srv.Handle("GET /ui/", ui.Handler("/ui/"))
	srv.Handle("GET /ui", ui.Redirect())
	names, err := newDNS(cfg, reg, log, prom)
	if err != nil {
		return err
	}
	containers, err := newDockerWatcher(cfg.Docker, reg, addr, log) // nil without -docker
	if err != nil {
		return err
	}
	var door *frontDoor // the proxy, if this agent is a front door
	if cfg.Proxy != nil {
		cfg.Proxy.lb.Registerer, cfg.Proxy.proxy.Registerer = prom, prom
		if cfg.Proxy.proxy.AccessLogTo == nil {
			cfg.Proxy.proxy.AccessLogTo = logOut
		}
		if door, err = newFrontDoor(cfg.Proxy, reg, log); err != nil {
			return err
		}
		defer door.ln.Close()
		if door.tlsLn != nil {
			defer door.tlsLn.Close()
		}
		srv.Handle("GET /v1/pier/routes", door.proxy.RoutesHandler())
	}

	var lns []net.Listener
	for _, host := range cfg.Client {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(cfg.HTTPPort)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("HTTP API: %w", err)
		}
		lns = append(lns, ln)
	}
	var tlsLns []net.Listener // the API over HTTPS, if -https-port is set
	if cfg.TLS.HTTPSPort >= 0 {
		tc, err := cfg.TLS.config()
		for _, host := range cfg.Client {
			if err != nil {
				break
			}
			var ln net.Listener
			if ln, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(cfg.TLS.HTTPSPort))); err != nil {
				err = fmt.Errorf("HTTPS API: %w", err)
				break
			}
			tlsLns = append(tlsLns, tls.NewListener(ln, tc))
		}
		if err != nil {
			for _, l := range append(lns, tlsLns...) {
				l.Close()
			}
			return err
		}
	}
	lns = append(lns, tlsLns...)
	if err := names.Listen(); err != nil {
		for _, l := range lns {
			l.Close()
		}
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { rl.onSIGHUP(gctx); return nil })
	g.Go(func() error { return members.Run(gctx) })
	g.Go(func() error { return checks.Run(gctx) })
	g.Go(func() error { return names.Run(gctx) })
	if containers != nil {
		g.Go(func() error { return containers.Run(gctx) })
	}
	if met.ln != nil {
		g.Go(func() error { return met.run(gctx) })
	}
	proxyAddr, proxyTLSAddr := "", ""
	if door != nil {
		proxyAddr = door.ln.Addr().String()
		g.Go(func() error { return door.bal.Run(gctx) })
		g.Go(func() error { return door.proxy.Run(gctx, door.ln) })
		if door.tlsLn != nil {
			proxyTLSAddr = door.tlsLn.Addr().String()
			g.Go(func() error { return door.proxy.RunTLS(gctx, door.tlsLn) })
		}
	}
	var bound, boundTLS []string
	for i, ln := range lns {
		if i < len(lns)-len(tlsLns) {
			bound = append(bound, ln.Addr().String())
		} else {
			boundTLS = append(boundTLS, ln.Addr().String())
		}
		g.Go(func() error { return srv.Run(gctx, ln) })
	}
	for _, h := range cfg.Client {
		if ip := net.ParseIP(h); ip != nil && !ip.IsLoopback() {
			if cfg.ACL.Enabled {
				agentLog.Info("the HTTP API listens on a non-loopback address; ACLs are on", "addr", h)
			} else {
				agentLog.Warn("SECURITY: the HTTP API listens on a non-loopback address with ACLs off: anyone who reaches it can register services and route the front door's traffic; enable acl in the config", "addr", h)
			}
		}
	}
	agentLog.Info("pier agent running", "version", version, "node", cfg.Node, "address", addr,
		"datacenter", cfg.Datacenter, "http", strings.Join(bound, ","), "https", strings.Join(boundTLS, ","), "dns", dnsAddrs(names), "gossip", members.Addr(), "proxy", proxyAddr, "proxy_tls", proxyTLSAddr, "dev", cfg.Dev, "data_dir", cfg.DataDir,
		"metrics", met.addr())
	if ready != nil {
		ready <- bound
	}
	err = g.Wait()
	agentLog.Info("pier agent stopped")
	return err
}

// cluster is the API's view of the gossip layer; leaving also stops the agent.
type cluster struct {
	*gossip.Gossip
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

func (c cluster) Leave() error {
	err := c.Gossip.Leave()
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
