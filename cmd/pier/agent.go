package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
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
	return agent(ctx, cfg, stderr, nil)
}

// agent runs an agent until ctx ends. ready, if not nil, receives the HTTP
// API's addresses once every listener is open (tests use it).
func agent(ctx context.Context, cfg agentConfig, logOut io.Writer, ready chan<- []string) error {
	log := newLogger(logOut, cfg.LogLevel, cfg.LogJSON)
	addr, err := cfg.advertiseAddr()
	if err != nil {
		return err
	}
	if cfg.Dev && cfg.Advertise == "" {
		addr = "127.0.0.1"
	}

	rcfg := registry.DefaultConfig()
	rcfg.NodeName = cfg.Node
	rcfg.Address = addr
	rcfg.Datacenter = cfg.Datacenter
	rcfg.NodeMeta = cfg.NodeMeta
	rcfg.DataDir = cfg.DataDir
	rcfg.AgentPort = cfg.SerfLANPort
	rcfg.Logger = log.With("component", "registry")
	reg, err := registry.New(rcfg)
	if err != nil {
		return err
	}
	for _, ss := range cfg.Services {
		if err := reg.RegisterService(ss.Service, ss.Checks, registry.SourceConfig); err != nil {
			return fmt.Errorf("config file %s: service %q: %w", ss.File, ss.Service.ID, err)
		}
	}

	acfg := api.DefaultConfig()
	acfg.Registry = reg
	acfg.Version = version
	acfg.Logger = log.With("component", "api")
	srv, err := api.New(acfg)
	if err != nil {
		return err
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
	g, gctx := errgroup.WithContext(ctx)
	var bound []string
	for _, ln := range lns {
		bound = append(bound, ln.Addr().String())
		g.Go(func() error { return srv.Run(gctx, ln) })
	}
	for _, h := range cfg.Client {
		if ip := net.ParseIP(h); ip != nil && !ip.IsLoopback() {
			log.Warn("the HTTP API listens on a non-loopback address and anyone who reaches it can register services", "addr", h)
		}
	}
	log.Info("pier agent running", "version", version, "node", cfg.Node, "address", addr,
		"datacenter", cfg.Datacenter, "http", strings.Join(bound, ","), "dev", cfg.Dev, "data_dir", cfg.DataDir)
	if ready != nil {
		ready <- bound
	}
	err = g.Wait()
	log.Info("pier agent stopped")
	return err
}

func newLogger(w io.Writer, level string, asJSON bool) *slog.Logger {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if asJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
