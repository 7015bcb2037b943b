package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
)

// Catalog is what the Runner needs from the registry: the checks to run
// (this node's entries in the current snapshot) and a way to report. It is
// satisfied by *registry.Registry.
type Catalog interface {
	// Snapshot returns the current catalog; its Changed channel wakes the
	// Runner to pick up added, changed and removed checks.
	Snapshot() *registry.Snapshot
	// Self returns this node; the Runner runs only this node's checks.
	Self() registry.Node
	// UpdateCheck records a check's result; an unchanged result publishes
	// nothing.
	UpdateCheck(id string, status registry.Status, output string) error
	// DeregisterService removes a service whose check stayed critical past
	// its DeregisterCriticalServiceAfter.
	DeregisterService(id string) error
	// SaveCheckState keeps a TTL check's result and deadline across a
	// restart of the agent; RestoredCheckState gives it back, once, to the
	// check registered again after the restart.
	SaveCheckState(registry.CheckState) error
	RestoredCheckState(id string) (registry.CheckState, bool)
}

var _ Catalog = (*registry.Registry)(nil)

// DockerExec runs a command inside a running container, as docker exec
// does, for checks with DockerContainerID (Consul's docker checks). It
// writes the command's stdout and stderr to out and returns its exit code;
// err means the command could not be run or its end not learnt.
// registry/docker's Exec satisfies it over the engine's API.
type DockerExec interface {
	Exec(ctx context.Context, container string, cmd []string, out io.Writer) (exitCode int, err error)
}

// Config configures a Runner. It is frozen after New; a zero field takes
// its default.
type Config struct {
	Catalog              Catalog       // required
	EnableScriptChecks   bool          // run Args checks; off by default, as Consul's enable_script_checks
	Docker               DockerExec    // runs the Args of checks with DockerContainerID; nil: such checks are critical
	DefaultTimeout       time.Duration // a probe's timeout when the check sets none (capped at its interval)
	OutputMaxSize        int           // bytes of output kept in Output
	OutputUpdateInterval time.Duration // an output-only change is reported at most this often
	ReapInterval         time.Duration // how often DeregisterCriticalServiceAfter is applied
	MinDeregisterAfter   time.Duration // floor on DeregisterCriticalServiceAfter
	Logger               *slog.Logger  // nil: discard

	Registerer prometheus.Registerer // nil: no metrics
}

// DefaultConfig returns the defaults a Consul user expects; Catalog must
// still be set.
func DefaultConfig() Config {
	return Config{
		DefaultTimeout:       10 * time.Second, // Consul's default check timeout
		OutputMaxSize:        4096,             // Consul's BufSize: 4 KiB of output
		OutputUpdateInterval: 5 * time.Minute,  // Consul's check_update_interval
		ReapInterval:         30 * time.Second, // Consul's check reap interval
		MinDeregisterAfter:   time.Minute,      // Consul's floor on deregister_critical_service_after
	}
}

// New validates cfg and returns a Runner; it runs nothing until Run.
func New(cfg Config) (*Runner, error) {
	if cfg.Catalog == nil {
		return nil, errors.New("health: a catalog is required")
	}
	def := DefaultConfig()
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = def.DefaultTimeout
	}
	if cfg.OutputMaxSize <= 0 {
		cfg.OutputMaxSize = def.OutputMaxSize
	}
	if cfg.OutputUpdateInterval <= 0 {
		cfg.OutputUpdateInterval = def.OutputUpdateInterval
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = def.ReapInterval
	}
	if cfg.MinDeregisterAfter <= 0 {
		cfg.MinDeregisterAfter = def.MinDeregisterAfter
	}
	r := &Runner{
		cfg:    cfg,
		cat:    cfg.Catalog,
		log:    cfg.Logger,
		node:   cfg.Catalog.Self().Name,
		checks: map[string]*check{},
	}
	if r.log == nil {
		r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var err error
	if r.met, err = newMetrics(cfg.Registerer, r); err != nil {
		return nil, fmt.Errorf("health: metrics: %w", err)
	}
	// One transport for every plain HTTP check. Keep-alives are off, as in
	// Consul: a check must see the target accept a connection, and 10,000
	// idle connections would only hold file descriptors.
	r.http = newHTTPClient(nil)
	return r, nil
}

// newHTTPClient returns a client that never uses a proxy from the
// environment: a health check goes to its target directly.
func newHTTPClient(tr *http.Transport) *http.Client {
	if tr == nil {
		tr = &http.Transport{}
	}
	tr.Proxy = nil
	tr.DisableKeepAlives = true
	tr.MaxResponseHeaderBytes = 64 << 10
	return &http.Client{Transport: tr}
}
