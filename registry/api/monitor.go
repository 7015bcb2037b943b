package api

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// monitorBuffer is how many formatted lines one /v1/agent/monitor reader
// may have waiting, as Consul's 512; past it lines are dropped for that
// reader rather than wait: logging must never block on a slow client.
const monitorBuffer = 512

// LogStream is the agent's slog.Handler: it passes every record to the
// agent's own handler (at the agent's level) and copies it, formatted, to
// each /v1/agent/monitor reader whose level it meets. The cost without
// readers is one atomic load per record.
type LogStream struct {
	base slog.Handler
	hub  *logHub
	ops  []logOp // With/WithGroup calls since the root, replayed for readers
}

// logOp is one WithAttrs or WithGroup call on a LogStream.
type logOp struct {
	group string
	attrs []slog.Attr
}

// logHub is what every handler derived from one root LogStream shares.
type logHub struct {
	mu   sync.RWMutex
	subs map[*logSub]struct{}
	// min is the lowest level a reader wants, math.MaxInt64 with none.
	min atomic.Int64
}

// logSub is one monitor reader: its own formatter over its own buffer, and
// the lines not yet written to it.
type logSub struct {
	level   slog.Level
	mu      sync.Mutex // guards buf and h, used from any logging goroutine
	buf     bytes.Buffer
	h       slog.Handler
	lines   chan []byte
	dropped atomic.Int64
}

// NewLogStream wraps base, the agent's own log handler.
func NewLogStream(base slog.Handler) *LogStream {
	hub := &logHub{subs: map[*logSub]struct{}{}}
	hub.min.Store(math.MaxInt64)
	return &LogStream{base: base, hub: hub}
}

// Enabled is true when the agent logs at l or a reader wants it.
func (t *LogStream) Enabled(ctx context.Context, l slog.Level) bool {
	return t.base.Enabled(ctx, l) || int64(l) >= t.hub.min.Load()
}

// Handle logs r and copies it to the readers; it never waits for them.
func (t *LogStream) Handle(ctx context.Context, r slog.Record) error {
	var err error
	if t.base.Enabled(ctx, r.Level) {
		err = t.base.Handle(ctx, r)
	}
	if int64(r.Level) >= t.hub.min.Load() {
		t.publish(ctx, r)
	}
	return err
}

func (t *LogStream) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return t
	}
	return &LogStream{base: t.base.WithAttrs(as), hub: t.hub, ops: append(t.ops[:len(t.ops):len(t.ops)], logOp{attrs: as})}
}

func (t *LogStream) WithGroup(name string) slog.Handler {
	if name == "" {
		return t
	}
	return &LogStream{base: t.base.WithGroup(name), hub: t.hub, ops: append(t.ops[:len(t.ops):len(t.ops)], logOp{group: name})}
}

// publish formats r once per reader (readers differ in format) with the
// attributes of the With calls that made this handler, and queues it.
func (t *LogStream) publish(ctx context.Context, r slog.Record) {
	t.hub.mu.RLock()
	defer t.hub.mu.RUnlock()
	var full *slog.Record
	for s := range t.hub.subs {
		if r.Level < s.level {
			continue
		}
		if full == nil {
			full = t.withOps(r)
		}
		s.mu.Lock()
		s.buf.Reset()
		s.h.Handle(ctx, *full)
		line := bytes.Clone(s.buf.Bytes())
		s.mu.Unlock()
		select {
		case s.lines <- line:
		default:
			s.dropped.Add(1)
		}
	}
}

// withOps rebuilds r as the root handler would have seen it: the record's
// attributes nested in the groups opened since, after the With attributes.
func (t *LogStream) withOps(r slog.Record) *slog.Record {
	cur := make([]slog.Attr, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool { cur = append(cur, a); return true })
	for i := len(t.ops) - 1; i >= 0; i-- {
		op := t.ops[i]
		if op.group != "" {
			args := make([]any, len(cur))
			for j, a := range cur {
				args[j] = a
			}
			cur = []slog.Attr{slog.Group(op.group, args...)}
			continue
		}
		cur = append(append(make([]slog.Attr, 0, len(op.attrs)+len(cur)), op.attrs...), cur...)
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(cur...)
	return &nr
}

func (h *logHub) subscribe(level slog.Level, asJSON bool) *logSub {
	s := &logSub{level: level, lines: make(chan []byte, monitorBuffer)}
	opts := &slog.HandlerOptions{Level: slog.Level(math.MinInt)}
	if asJSON {
		s.h = slog.NewJSONHandler(&s.buf, opts)
	} else {
		s.h = slog.NewTextHandler(&s.buf, opts)
	}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.resetMin()
	h.mu.Unlock()
	return s
}

func (h *logHub) unsubscribe(s *logSub) {
	h.mu.Lock()
	delete(h.subs, s)
	h.resetMin()
	h.mu.Unlock()
}

// resetMin recomputes the lowest level wanted; h.mu held.
func (h *logHub) resetMin() {
	lo := int64(math.MaxInt64)
	for s := range h.subs {
		lo = min(lo, int64(s.level))
	}
	h.min.Store(lo)
}

// parseMonitorLevel reads Consul's log levels; trace is below debug (pier
// logs nothing there today).
func parseMonitorLevel(s string) (slog.Level, bool) {
	switch strings.ToUpper(s) {
	case "", "INFO":
		return slog.LevelInfo, true
	case "TRACE":
		return slog.LevelDebug - 4, true
	case "DEBUG":
		return slog.LevelDebug, true
	case "WARN":
		return slog.LevelWarn, true
	case "ERR", "ERROR":
		return slog.LevelError, true
	}
	return 0, false
}

// agentMonitor streams the agent's log from now on, one line per record,
// until the client goes away, as Consul's /v1/agent/monitor.
func (s *Server) agentMonitor(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Logs == nil {
		httpError(w, http.StatusNotImplemented, "this agent does not stream its log")
		return
	}
	q := r.URL.Query()
	level, ok := parseMonitorLevel(q.Get("loglevel"))
	if !ok {
		httpError(w, http.StatusBadRequest, "Unknown log level: %s", q.Get("loglevel"))
		return
	}
	_, asJSON := q["logjson"]
	sub := s.cfg.Logs.hub.subscribe(level, asJSON)
	defer s.cfg.Logs.hub.unsubscribe(sub)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w) // through the metrics wrapper
	if rc.Flush() != nil {
		return
	}

	// Drops are told in the agent's log, at most every 10 s while they go
	// on and once at the end, not to the reader that is already behind.
	var told int64
	tell := func() {
		if n := sub.dropped.Load(); n > told {
			s.log.Warn("monitor: a slow reader missed log lines", "dropped", n-told, "remote", r.RemoteAddr)
			told = n
		}
	}
	defer tell()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			tell()
		case line := <-sub.lines:
			if _, err := w.Write(line); err != nil {
				return
			}
			// Write whatever else is queued before one flush.
			for more := true; more; {
				select {
				case line := <-sub.lines:
					if _, err := w.Write(line); err != nil {
						return
					}
				default:
					more = false
				}
			}
			if rc.Flush() != nil {
				return
			}
		}
	}
}
