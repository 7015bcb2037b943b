package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Runner runs this node's checks. Create it with New and start it with Run.
type Runner struct {
	cfg  Config
	cat  Catalog
	log  *slog.Logger
	http *http.Client   // shared by HTTP checks without TLS options
	met  *healthMetrics // nil: no metrics

	mu      sync.Mutex
	ctx     context.Context   // the context of Run; nil before Run
	stopped bool              // Run has returned
	node    string            // this node's name; its checks are the ones to run
	checks  map[string]*check // by check ID
	wg      sync.WaitGroup    // one per check goroutine

	syncMu sync.Mutex // serializes sync; guards gen and seen
	gen    uint64
	seen   map[string]*seenEntry // the runnable entries the last sync saw

	// observe, when set (by tests), is called as each probe starts with the
	// time it was scheduled for.
	observe func(id string, scheduled, started time.Time)
}

// seenEntry is a catalog entry as the last sync saw it.
type seenEntry struct {
	e   *registry.CheckEntry
	gen uint64
}

// minSyncGap is the least time between two syncs with the catalog: the
// first change after a quiet spell is applied at once, and a burst (10,000
// checks turning passing after a start) is applied in batches rather than
// by walking every check once per change.
const minSyncGap = 100 * time.Millisecond

// check is one running check. The goroutine that runs it owns the
// threshold counters; the fields below mu are the TTL state; entry,
// critSince and outAt are guarded by Runner.mu; the rest never changes.
type check struct {
	id        string
	serviceID string
	def       registry.CheckDefinition
	cancel    context.CancelFunc
	client    *http.Client // HTTP checks

	entry     *registry.CheckEntry // the catalog entry the last sync saw
	critSince time.Time            // when it was first seen critical; zero if it is not
	outAt     time.Time            // when an output-only change was last reported

	mu         sync.Mutex // TTL checks
	deadline   time.Time
	lastOutput string
	expired    bool
}

// Run runs the checks until ctx ends; it then stops every check and waits
// for them. It returns nil when ctx ends.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.ctx != nil {
		r.mu.Unlock()
		return errors.New("health: Run called twice")
	}
	r.ctx = ctx
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.stopped = true
		for id, c := range r.checks {
			c.cancel()
			delete(r.checks, id)
		}
		r.mu.Unlock()
		r.wg.Wait()
	}()

	reap := time.NewTicker(r.cfg.ReapInterval)
	defer reap.Stop()
	gap := time.NewTimer(0)
	defer gap.Stop()
	snap := r.cat.Snapshot()
	r.sync(snap)
	var last time.Time // the first change after the start is applied at once
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-snap.Changed():
			if wait := minSyncGap - time.Since(last); wait > 0 {
				gap.Reset(wait)
				select {
				case <-ctx.Done():
					return nil
				case <-gap.C:
				}
			}
			// However many changes came, the newest snapshot has them all.
			snap = r.cat.Snapshot()
			r.sync(snap)
			last = time.Now()
		case <-reap.C:
			r.reap(time.Now())
		}
	}
}

// sync starts, restarts and stops check goroutines so that they match this
// node's checks in snap. Entries are immutable and shared between
// snapshots, so an entry seen before is skipped by pointer, without taking
// the lock that reports need; only a changed entry has its definition
// compared.
func (r *Runner) sync(snap *registry.Snapshot) {
	r.syncMu.Lock()
	defer r.syncMu.Unlock()
	if r.seen == nil {
		r.seen = map[string]*seenEntry{}
	}
	r.gen++
	var changed []*registry.CheckEntry
	var removed []string
	n := 0
	for _, e := range snap.AllNodeChecks(r.node) {
		if e.Definition.Type() == "" {
			continue // serfHealth, maintenance: nothing to run
		}
		n++
		s := r.seen[e.CheckID]
		if s == nil {
			s = &seenEntry{}
			r.seen[e.CheckID] = s
		} else if s.e == e {
			s.gen = r.gen
			continue
		}
		s.e, s.gen = e, r.gen
		changed = append(changed, e)
	}
	if len(r.seen) != n {
		for id, s := range r.seen {
			if s.gen != r.gen {
				removed = append(removed, id)
				delete(r.seen, id)
			}
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return
	}

	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil || r.stopped {
		r.seen = nil // not running: look at everything again next time
		return
	}
	for _, id := range removed {
		if c := r.checks[id]; c != nil {
			c.cancel()
			delete(r.checks, id)
		}
	}
	for _, e := range changed {
		c := r.checks[e.CheckID]
		if c != nil && (c.serviceID != e.ServiceID || !sameDefinition(&c.def, &e.Definition)) {
			c.cancel()
			c = nil
		}
		if c == nil {
			c = r.startLocked(e)
		}
		c.entry = e
		switch {
		case e.Status != registry.StatusCritical:
			c.critSince = time.Time{}
		case c.critSince.IsZero():
			c.critSince = now
		}
	}
}

func (r *Runner) startLocked(e *registry.CheckEntry) *check {
	ctx, cancel := context.WithCancel(r.ctx)
	c := &check{id: e.CheckID, serviceID: e.ServiceID, def: e.Definition, cancel: cancel}
	if c.def.HTTP != "" {
		c.client = r.http
		if c.def.TLSSkipVerify || c.def.TLSServerName != "" {
			c.client = newHTTPClient(&http.Transport{TLSClientConfig: tlsConfig(c.def)})
		}
	}
	r.checks[c.id] = c
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if c.def.TTL > 0 {
			r.runTTL(ctx, c)
		} else {
			r.runInterval(ctx, c)
		}
	}()
	r.log.Debug("check started", "check", c.id, "type", c.def.Type())
	return c
}

// report records a result, unless the check has been replaced or removed
// (ctx ended) since the probe started. An output-only change waits for
// OutputUpdateInterval unless force is set.
func (r *Runner) report(ctx context.Context, c *check, st registry.Status, output string, force bool) {
	output = truncate(output, r.cfg.OutputMaxSize)
	now := time.Now()
	r.mu.Lock()
	if ctx.Err() != nil {
		r.mu.Unlock()
		return
	}
	e := c.entry
	if e.Status == st && (e.Output == output || (!force && now.Sub(c.outAt) < r.cfg.OutputUpdateInterval)) {
		r.mu.Unlock()
		return
	}
	c.outAt = now
	r.mu.Unlock()
	if e.Status != st {
		lv := slog.LevelInfo
		if st != registry.StatusPassing {
			lv = slog.LevelWarn
		}
		r.met.changed(st)
		r.log.Log(ctx, lv, "check status changed", "check", c.id, "service", c.serviceID, "from", e.Status, "to", st)
	}
	if err := r.cat.UpdateCheck(c.id, st, output); err != nil && !errors.Is(err, registry.ErrNotFound) {
		r.log.Warn("reporting a check result", "check", c.id, "err", err)
	}
}

// reap deregisters the services of checks that have been critical for
// longer than their DeregisterCriticalServiceAfter.
func (r *Runner) reap(now time.Time) {
	var ids []string
	r.mu.Lock()
	for _, c := range r.checks {
		after := time.Duration(c.def.DeregisterCriticalServiceAfter)
		if after == 0 || c.serviceID == "" || c.critSince.IsZero() {
			continue
		}
		if now.Sub(c.critSince) >= max(after, r.cfg.MinDeregisterAfter) {
			ids = append(ids, c.serviceID)
		}
	}
	r.mu.Unlock()
	done := map[string]bool{}
	for _, id := range ids {
		if done[id] {
			continue // several of its checks were critical
		}
		done[id] = true
		err := r.cat.DeregisterService(id)
		switch {
		case err == nil:
			r.log.Warn("deregistered a service whose check stayed critical", "service", id)
		case !errors.Is(err, registry.ErrNotFound):
			r.log.Warn("deregistering a critical service", "service", id, "err", err)
		}
	}
}

// UpdateTTL records the result of a TTL check and restarts its TTL, for the
// /v1/agent/check/pass|warn|fail|update endpoints. A check that is unknown or
// not a TTL check is an error wrapping registry.ErrNotFound, as in Consul.
func (r *Runner) UpdateTTL(id string, st registry.Status, output string) error {
	switch st {
	case registry.StatusPassing, registry.StatusWarning, registry.StatusCritical:
	default:
		return &registry.FieldError{Field: "Status", Msg: fmt.Sprintf("%q must be one of passing, warning, critical", st)}
	}
	output = truncate(output, r.cfg.OutputMaxSize)
	c := r.ttlCheck(id)
	if c == nil {
		// Run has not seen it yet (registered a moment ago): look again.
		r.sync(r.cat.Snapshot())
		if c = r.ttlCheck(id); c == nil {
			return fmt.Errorf("health: CheckID %q does not have associated TTL: %w", id, registry.ErrNotFound)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = time.Now().Add(time.Duration(c.def.TTL))
	c.lastOutput, c.expired = output, false
	if err := r.cat.UpdateCheck(id, st, output); err != nil {
		return err
	}
	// The update is made either way: a state that could not be saved only
	// means the check starts critical if the agent restarts.
	if err := r.cat.SaveCheckState(registry.CheckState{CheckID: id, Status: st, Output: output, Expires: c.deadline}); err != nil &&
		!errors.Is(err, registry.ErrNotFound) {
		r.log.Warn("saving a TTL check's state", "check", id, "err", err)
	}
	return nil
}

func (r *Runner) ttlCheck(id string) *check {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.checks[id]; c != nil && c.def.TTL > 0 {
		return c
	}
	return nil
}

// truncate keeps the first max bytes of s.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	return s[:max]
}

// sameDefinition reports whether two definitions run the same check. Nil
// and empty maps and slices are the same (a definition that went through
// JSON may have either).
func sameDefinition(a, b *registry.CheckDefinition) bool {
	x, y := *a, *b
	x.Header, y.Header, x.Args, y.Args = nil, nil, nil, nil
	return reflect.DeepEqual(x, y) && slices.Equal(a.Args, b.Args) &&
		maps.EqualFunc(a.Header, b.Header, func(u, v []string) bool { return slices.Equal(u, v) })
}
