package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"sync"
	"syscall"

	"github.com/pier-dev/pier/registry"
)

// reloader re-reads the configuration on SIGHUP, PUT /v1/agent/reload or
// `pier reload`, as Consul's reload does, and applies what an agent can
// change while it runs: the services and checks of config files (added,
// changed, removed; a check whose definition is unchanged keeps its status)
// and log_level. Any other setting takes effect at the next start, and a
// reload that changes one says so in the log. A config that does not parse
// or validate changes nothing.
type reloader struct {
	mu      sync.Mutex
	resolve func() (agentConfig, error)
	cur     agentConfig // as resolve read it last (the agent changes the copy it runs with)
	reg     *registry.Registry
	level   *slog.LevelVar
	log     *slog.Logger
	hup     chan os.Signal // SIGHUP, caught from the start: its default would end the agent
}

func newReloader(resolve func() (agentConfig, error), reg *registry.Registry, level *slog.LevelVar, log *slog.Logger) (*reloader, error) {
	r := &reloader{resolve: resolve, reg: reg, level: level, log: log, hup: make(chan os.Signal, 1)}
	if resolve != nil {
		var err error
		if r.cur, err = resolve(); err != nil {
			return nil, err
		}
	}
	signal.Notify(r.hup, syscall.SIGHUP)
	return r, nil
}

// stop lets SIGHUP go back to its default.
func (r *reloader) stop() { signal.Stop(r.hup) }

func (r *reloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.resolve == nil {
		return errors.New("this agent cannot read its configuration again")
	}
	next, err := r.resolve()
	if err != nil {
		return fmt.Errorf("reload: nothing changed: %w", err)
	}
	removed, err := r.reg.SyncConfigServices(next.Services)
	r.level.Set(parseLevel(next.LogLevel))
	before, after := r.cur, next
	before.Services, after.Services, before.LogLevel, after.LogLevel = nil, nil, "", ""
	if !reflect.DeepEqual(before, after) {
		r.log.Warn("reload: settings other than services, checks and log_level changed; they take effect at the next start")
	}
	r.cur = next
	r.log.Info("reloaded the configuration", "services", len(next.Services), "removed", removed, "log_level", next.LogLevel)
	return err
}

// ServeHTTP is PUT /v1/agent/reload: 200 when the reload was applied, 500
// with the reason, on one line, when it was not (as Consul answers).
func (r *reloader) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if err := r.reload(); err != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintln(w, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
}

// onSIGHUP reloads on each SIGHUP until ctx ends.
func (r *reloader) onSIGHUP(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.hup:
			if err := r.reload(); err != nil {
				r.log.Error("reload on SIGHUP", "err", err)
			}
		}
	}
}

func runReload(args []string, stdout, stderr io.Writer) error {
	fs, c, _, err := apiCommand("reload", args, stderr, nil)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if err := c.do("PUT", "/v1/agent/reload", nil, nil); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Configuration reload triggered")
	return nil
}
