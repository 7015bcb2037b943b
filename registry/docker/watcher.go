package docker

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Run syncs the running containers, follows the engine's events and
// resyncs every Resync until ctx ends. An engine that does not answer, or
// whose event stream ends (it restarted), is tried again with backoff, and
// every reconnect starts with a full sync, so nothing missed meanwhile
// stays registered. Run returns nil when ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.engine.hc.CloseIdleConnections()
	pause := w.cfg.RetryMin
	failing := false
	for {
		synced, err := w.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case synced:
			pause = w.cfg.RetryMin // it was up: a fresh failure
			failing = false
			w.log.Warn("lost the engine's event stream; reconnecting", "endpoint", w.cfg.Endpoint, "err", err)
		case !failing:
			failing = true
			w.log.Warn("engine unreachable; retrying", "endpoint", w.cfg.Endpoint, "err", err)
		default:
			w.log.Debug("engine still unreachable", "err", err, "retry_in", pause)
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		pause = min(pause*2, w.cfg.RetryMax)
	}
}

// session is one connection to the engine: open the event stream first (so
// that nothing happening during the sync is missed), sync, then apply
// events and periodic resyncs until the stream fails or ctx ends.
func (w *Watcher) session(ctx context.Context) (synced bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := w.engine.ping(ctx); err != nil {
		return false, err
	}
	body, err := w.engine.events(ctx)
	if err != nil {
		return false, fmt.Errorf("docker: events: %w", err)
	}
	events := make(chan event, 64)
	errc := make(chan error, 1)
	go func() {
		defer body.Close()
		errc <- decodeEvents(body, func(e event) error {
			select {
			case events <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	// The decoder goroutine ends once ctx is cancelled (the request's body
	// is closed under it); wait for it so that nothing outlives Run.
	defer func() {
		cancel()
		<-errc
	}()
	if err := w.syncAll(ctx); err != nil {
		return false, err
	}
	w.log.Info("following the engine's events", "endpoint", w.cfg.Endpoint, "containers", len(w.containers))
	tick := time.NewTicker(w.cfg.Resync)
	defer tick.Stop()
	for {
		select {
		case e := <-events:
			w.handle(ctx, e)
		case <-tick.C:
			if err := w.syncAll(ctx); err != nil {
				return true, err
			}
		case err := <-errc:
			errc <- err // for the deferred wait
			return true, fmt.Errorf("docker: event stream: %w", err)
		case <-ctx.Done():
			return true, nil
		}
	}
}

// handle applies one event. Removal needs no call to the engine, so a
// stopping container leaves the catalog as soon as its event is read.
func (w *Watcher) handle(ctx context.Context, e event) {
	id := e.Actor.ID
	w.log.Debug("docker event", "action", e.Action, "container", shortID(id), "name", e.Actor.Attributes["name"])
	switch e.Action {
	case "start", "restart", "unpause", "rename":
		if e.Action == "start" || e.Action == "restart" {
			delete(w.stopping, id) // a new process
		}
		if err := w.syncContainer(ctx, id); err != nil && !errors.Is(err, errGone) {
			w.log.Warn("inspecting container", "container", shortID(id), "err", err)
		}
	case "kill":
		// docker stop sends the stop signal (kill), waits, then the
		// container dies: take it out at once so that no new request
		// reaches a process that is shutting down. Other signals (a HUP
		// to reload, say) change nothing.
		t, ok := w.containers[id]
		sig := parseSignal(e.Actor.Attributes["signal"])
		if ok && isStopSignal(sig, t.stopSignal) {
			w.stopping[id] = time.Now()
			w.drop(id, "kill")
		}
	case "die", "stop", "pause", "destroy":
		w.drop(id, e.Action)
		if e.Action == "destroy" {
			delete(w.stopping, id)
			delete(w.reported, id)
		}
	}
}

// syncAll registers every running container and removes every Docker
// registration whose container is gone, including any made before a
// restart of the agent or a reconnect.
func (w *Watcher) syncAll(ctx context.Context) error {
	ids, err := w.engine.running(ctx)
	if err != nil {
		return fmt.Errorf("docker: listing containers: %w", err)
	}
	running := map[string]bool{}
	for _, id := range ids {
		running[id] = true
	}
	// Drop the gone first: a new container may take over their service IDs.
	for id := range w.containers {
		if !running[id] {
			w.drop(id, "gone")
		}
	}
	now := time.Now()
	for id, at := range w.stopping {
		if !running[id] || now.Sub(at) > w.cfg.StopGrace {
			delete(w.stopping, id)
		}
	}
	for id := range w.reported {
		if !running[id] {
			delete(w.reported, id)
		}
	}
	for _, id := range ids {
		if err := w.syncContainer(ctx, id); err != nil && !errors.Is(err, errGone) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			w.log.Warn("inspecting container", "container", shortID(id), "err", err)
		}
	}
	// Docker registrations nobody owns: left from before, or re-registered
	// under a changed ID.
	self := w.cfg.Catalog.Self().Name
	for _, s := range w.cfg.Catalog.Snapshot().NodeServices(self) {
		if _, owned := w.owner[s.ID]; owned {
			continue
		}
		if src, ok := w.cfg.Catalog.LocalSource(s.ID); ok && src == registry.SourceDocker {
			if err := w.cfg.Catalog.DeregisterService(s.ID); err == nil {
				w.log.Info("removed a registration whose container is gone", "service", s.ID)
			}
		}
	}
	// Checks persisted on containers' services (maintenance) can come back
	// now that the services are registered again.
	if r, ok := w.cfg.Catalog.(interface{ RestorePersistedChecks() }); ok {
		r.RestorePersistedChecks()
	}
	return nil
}

// syncContainer makes the catalog match one container's current state.
func (w *Watcher) syncContainer(ctx context.Context, id string) error {
	c, err := w.engine.inspect(ctx, id)
	if errors.Is(err, errGone) {
		w.drop(id, "gone")
		return err
	}
	if err != nil {
		return err
	}
	if !c.State.Running || c.State.Paused || c.State.Restarting {
		w.drop(id, "not running")
		return nil
	}
	if !selected(c.Config.Labels, w.cfg.Label) {
		w.drop(id, "not selected by label")
		return nil
	}
	if at, ok := w.stopping[id]; ok && time.Since(at) <= w.cfg.StopGrace {
		return nil // sent its stop signal and still shutting down
	}
	regs, problems := services(c, naming{Hostname: w.cfg.Hostname, Address: w.cfg.Address, Internal: w.cfg.Internal})
	w.report(c, problems)
	w.apply(c, regs)
	return nil
}

// selected reports whether labels carry the watcher's label filter ("key"
// or "key=value"). Several agents can share one engine (a compose cluster
// on one host), and each must register only the containers of its own
// node, as if each had an engine of its own.
func selected(labels map[string]string, filter string) bool {
	if filter == "" {
		return true
	}
	k, v, hasValue := strings.Cut(filter, "=")
	got, ok := labels[k]
	return ok && (!hasValue || got == v)
}

// report logs a container's problems once, not at every resync.
func (w *Watcher) report(c *container, problems []error) {
	var b strings.Builder
	for _, p := range problems {
		b.WriteString(p.Error())
		b.WriteByte('\n')
	}
	msg := b.String()
	if w.reported[c.ID] == msg {
		return
	}
	w.reported[c.ID] = msg
	for _, p := range problems {
		w.log.Warn("container not fully registered", "container", strings.TrimPrefix(c.Name, "/"), "err", p)
	}
}

// apply registers regs for container c and removes the services c had that
// are no longer among them.
func (w *Watcher) apply(c *container, regs []registration) {
	t := w.containers[c.ID]
	if t == nil {
		t = &tracked{}
	}
	t.name = strings.TrimPrefix(c.Name, "/")
	t.stopSignal = parseSignal(c.Config.StopSignal)
	if t.stopSignal == 0 {
		t.stopSignal = 15 // SIGTERM, the engine's default
	}
	var kept []string
	for _, r := range regs {
		sid := r.Service.ID
		if o, ok := w.owner[sid]; ok && o != c.ID {
			w.log.Warn("service ID already registered for another container", "service", sid, "container", t.name, "owner", shortID(o))
			continue
		}
		if src, ok := w.cfg.Catalog.LocalSource(sid); ok && src != registry.SourceDocker {
			w.log.Warn("service ID already registered from another source; leaving it alone", "service", sid, "source", src, "container", t.name)
			continue
		}
		w.keepCheckState(r)
		_, existed := w.cfg.Catalog.LocalSource(sid)
		if err := w.cfg.Catalog.RegisterService(r.Service, r.Checks, registry.SourceDocker); err != nil {
			w.log.Warn("registering", "service", sid, "container", t.name, "err", err)
			continue
		}
		if !existed {
			w.log.Info("registered", "service", r.Service.Name, "id", sid, "address", r.Service.Address, "port", r.Service.Port)
		}
		w.owner[sid] = c.ID
		kept = append(kept, sid)
	}
	for _, sid := range t.services {
		if !slices.Contains(kept, sid) {
			w.deregister(sid, c.ID)
		}
	}
	t.services = kept
	if len(kept) == 0 {
		delete(w.containers, c.ID)
		return
	}
	w.containers[c.ID] = t
}

// drop removes every service of container id.
func (w *Watcher) drop(id, why string) {
	t, ok := w.containers[id]
	if !ok {
		return
	}
	for _, sid := range t.services {
		if w.deregister(sid, id) {
			w.log.Info("deregistered", "id", sid, "container", t.name, "event", why)
		}
	}
	delete(w.containers, id)
}

// deregister removes service sid if container cid owns it and it is still
// a Docker registration.
func (w *Watcher) deregister(sid, cid string) bool {
	if w.owner[sid] != cid {
		return false
	}
	delete(w.owner, sid)
	if src, ok := w.cfg.Catalog.LocalSource(sid); !ok || src != registry.SourceDocker {
		return false
	}
	if err := w.cfg.Catalog.DeregisterService(sid); err != nil && !errors.Is(err, registry.ErrNotFound) {
		w.log.Warn("deregistering", "service", sid, "err", err)
		return false
	}
	return true
}

// keepCheckState carries the status of an unchanged check over to a
// registration again (a resync), so that it is no change at all rather than
// a reset to the initial status.
func (w *Watcher) keepCheckState(r registration) {
	if len(r.Checks) == 0 {
		return
	}
	cur := w.cfg.Catalog.Snapshot().NodeChecks(w.cfg.Catalog.Self().Name, r.Service.ID)
	for i := range r.Checks {
		for _, e := range cur {
			if e.CheckID == r.Checks[i].CheckID && reflect.DeepEqual(e.Definition, r.Checks[i].Definition) {
				r.Checks[i].Status, r.Checks[i].Output = e.Status, e.Output
			}
		}
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// signals maps the names a Dockerfile's STOPSIGNAL may use onto Linux
// numbers; the engine's kill events carry numbers.
var signals = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
	"USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17,
	"CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25,
	"VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}

// parseSignal reads "15", "TERM" or "SIGTERM"; 0 if it is none of those.
func parseSignal(s string) int {
	s = strings.ToUpper(strings.TrimSpace(s))
	if n, err := strconv.Atoi(s); err == nil && n > 0 {
		return n
	}
	return signals[strings.TrimPrefix(s, "SIG")]
}

// isStopSignal reports whether sig ends a container whose stop signal is
// stop: that one, or one that ends any process (KILL, TERM, INT, QUIT).
func isStopSignal(sig, stop int) bool {
	switch sig {
	case 0:
		return false
	case stop, 9, 15, 2, 3:
		return true
	}
	return false
}
