package docker

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Catalog is what the watcher needs from the registry; *registry.Registry
// satisfies it.
type Catalog interface {
	RegisterService(s registry.Service, checks []registry.Check, src registry.Source) error
	DeregisterService(id string) error
	LocalSource(id string) (registry.Source, bool)
	Snapshot() *registry.Snapshot
	Self() registry.Node
}

var _ Catalog = (*registry.Registry)(nil)

// Config configures a Watcher. It is frozen after New.
type Config struct {
	Catalog        Catalog       // required
	Endpoint       string        // the engine's API: unix:///path, tcp://host:port or http://host:port
	Address        string        // the agent's advertise address, registered with published ports; required unless Internal
	Hostname       string        // first part of service IDs (<hostname>:<container>:<port>); empty: the host name
	Internal       bool          // register the container's IP and exposed port, also for unpublished ports
	Label          string        // "key" or "key=value": only containers carrying this label are registered; empty: all
	Resync         time.Duration // how often every running container is listed again
	StopGrace      time.Duration // a container sent its stop signal is not registered again by a resync for this long
	RetryMin       time.Duration // first pause before reconnecting to the engine
	RetryMax       time.Duration // longest pause between reconnects
	RequestTimeout time.Duration // of each API call (the event stream has none)
	Logger         *slog.Logger  // nil: discard
}

// DefaultConfig returns Registrator's defaults; Catalog and Address must
// still be set.
func DefaultConfig() Config {
	return Config{
		Endpoint:       "unix:///var/run/docker.sock", // the engine's default socket
		Resync:         time.Minute,                   // Registrator's -resync, which is off by default there
		StopGrace:      time.Minute,                   // docker stop waits 10s before SIGKILL by default
		RetryMin:       200 * time.Millisecond,        // an engine restart takes a few seconds
		RetryMax:       10 * time.Second,              // so a restarted engine is found again quickly
		RequestTimeout: 10 * time.Second,              // an inspect takes milliseconds
	}
}

// Watcher registers this node's containers; see the package comment.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	engine *engine

	// Owned by Run's goroutine: no lock.
	containers map[string]*tracked // by container ID: what this watcher registered
	owner      map[string]string   // service ID -> container ID
	stopping   map[string]time.Time
	reported   map[string]string // container ID -> last problem logged, so a resync does not repeat it
}

// tracked is a container whose services the watcher registered.
type tracked struct {
	name       string
	services   []string
	stopSignal int
}

// New validates cfg and returns a Watcher; it talks to the engine only in
// Run.
func New(cfg Config) (*Watcher, error) {
	def := DefaultConfig()
	if cfg.Catalog == nil {
		return nil, errors.New("docker: a catalog is required")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = def.Endpoint
	}
	if cfg.Address == "" && !cfg.Internal {
		return nil, errors.New("docker: the agent's address is required")
	}
	if cfg.Address != "" && net.ParseIP(cfg.Address) == nil {
		return nil, fmt.Errorf("docker: address %q is not an IP address", cfg.Address)
	}
	if cfg.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return nil, fmt.Errorf("docker: reading the host name for service IDs: %v", err)
		}
		cfg.Hostname = h
	}
	if k, _, _ := strings.Cut(cfg.Label, "="); cfg.Label != "" && strings.TrimSpace(k) == "" {
		return nil, fmt.Errorf("docker: label %q: want key or key=value", cfg.Label)
	}
	if cfg.Resync < 0 || cfg.StopGrace < 0 || cfg.RetryMin < 0 || cfg.RetryMax < 0 || cfg.RequestTimeout < 0 {
		return nil, errors.New("docker: durations must not be negative")
	}
	if cfg.Resync == 0 {
		cfg.Resync = def.Resync
	}
	if cfg.StopGrace == 0 {
		cfg.StopGrace = def.StopGrace
	}
	if cfg.RetryMin == 0 {
		cfg.RetryMin = def.RetryMin
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = def.RetryMax
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = cfg.RetryMin
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = def.RequestTimeout
	}
	eng, err := newEngine(cfg.Endpoint, cfg.RequestTimeout)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Watcher{
		cfg: cfg, log: log, engine: eng,
		containers: map[string]*tracked{},
		owner:      map[string]string{},
		stopping:   map[string]time.Time{},
		reported:   map[string]string{},
	}, nil
}
