package health

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/pier-dev/pier/registry"
)

// runInterval probes c every interval until ctx ends. The first probe comes
// at a random point of the first interval, so that checks registered
// together (an agent start, a deploy) spread out; later probes keep that
// phase, on a schedule that does not drift with the probes' own duration.
func (r *Runner) runInterval(ctx context.Context, c *check) {
	interval := max(time.Duration(c.def.Interval), time.Second)
	timeout := r.cfg.DefaultTimeout
	if c.def.Timeout > 0 {
		timeout = time.Duration(c.def.Timeout)
	} else if interval < timeout {
		timeout = interval
	}
	th := newThresholds(c.def)
	next := time.Now().Add(rand.N(interval))
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		started := time.Now()
		if r.observe != nil {
			r.observe(c.id, next, started)
		}
		st, out := r.probe(ctx, c, timeout)
		if ctx.Err() != nil {
			return // stopped or replaced while probing: the result is stale
		}
		r.met.probed(&c.def, time.Since(started).Seconds())
		if st, ok := th.apply(st); ok {
			r.report(ctx, c, st, out, false)
		}
		// Skip the slots a slow probe (or a stalled machine) missed rather
		// than firing them back to back.
		now := time.Now()
		next = next.Add(interval)
		if !next.After(now) {
			next = next.Add((now.Sub(next)/interval + 1) * interval)
		}
		timer.Reset(next.Sub(now))
	}
}

// probe runs one probe of c with its timeout. A panic in a probe is
// reported as critical rather than taking the agent down.
func (r *Runner) probe(ctx context.Context, c *check, timeout time.Duration) (st registry.Status, out string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("check panicked", "check", c.id, "panic", p)
			st, out = registry.StatusCritical, fmt.Sprintf("check panicked: %v", p)
		}
	}()
	d := &c.def
	switch {
	case d.HTTP != "":
		return r.probeHTTP(ctx, c.client, d)
	case d.TCP != "":
		return probeTCP(ctx, d.TCP)
	case d.GRPC != "":
		return probeGRPC(ctx, d)
	case len(d.Args) > 0:
		if !r.cfg.EnableScriptChecks {
			return registry.StatusCritical, "script checks are disabled on this agent (start it with -enable-script-checks)"
		}
		if d.DockerContainerID != "" {
			return r.probeDocker(ctx, d, timeout)
		}
		return r.probeScript(ctx, d.Args, timeout)
	}
	return registry.StatusCritical, "no check type"
}

// runTTL marks c critical when no update arrives within its TTL. Updates
// (UpdateTTL) move the deadline; the timer then re-arms for the new
// deadline instead of being reset from another goroutine.
func (r *Runner) runTTL(ctx context.Context, c *check) {
	ttl := time.Duration(c.def.TTL)
	c.mu.Lock()
	if st, ok := r.cat.RestoredCheckState(c.id); ok && c.deadline.IsZero() {
		// The state it had before the agent restarted runs out when it
		// would have.
		c.deadline, c.lastOutput = st.Expires, st.Output
	}
	if c.deadline.IsZero() {
		c.deadline = time.Now().Add(ttl)
	}
	wait := time.Until(c.deadline)
	c.mu.Unlock()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		c.mu.Lock()
		wait = time.Until(c.deadline)
		if wait <= 0 {
			if !c.expired {
				c.expired = true
				r.report(ctx, c, registry.StatusCritical, "TTL expired (last output before timeout follows): "+c.lastOutput, true)
			}
			wait = ttl // poll until an update moves the deadline
		}
		c.mu.Unlock()
		timer.Reset(wait)
	}
}

// thresholds applies Consul's SuccessBeforePassing, FailuresBeforeWarning
// and FailuresBeforeCritical to a stream of probe results.
type thresholds struct {
	successBefore, warningBefore, criticalBefore int
	successes, failures                          int
}

func newThresholds(d registry.CheckDefinition) thresholds {
	t := thresholds{
		successBefore:  d.SuccessBeforePassing,
		warningBefore:  d.FailuresBeforeWarning,
		criticalBefore: d.FailuresBeforeCritical,
	}
	if t.warningBefore == 0 {
		t.warningBefore = t.criticalBefore // Consul: defaults to FailuresBeforeCritical
	}
	return t
}

// apply counts a probe result and returns the status to report; false
// means the result is below its threshold and nothing is reported.
func (t *thresholds) apply(st registry.Status) (registry.Status, bool) {
	if st == registry.StatusPassing || st == registry.StatusWarning {
		t.successes++
		t.failures = 0
		return st, t.successes >= t.successBefore
	}
	t.failures++
	t.successes = 0
	switch {
	case t.failures >= t.criticalBefore:
		return registry.StatusCritical, true
	case t.failures >= t.warningBefore:
		return registry.StatusWarning, true
	}
	return st, false
}
