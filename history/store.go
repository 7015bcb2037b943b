package history

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kind is what a series is about; each kind has its own fields.
type Kind string

// The kinds of series and, for each, the fields of one point.
const (
	Route   Kind = "route"   // a proxy route (host+path); its owner is its service
	Service Kind = "service" // a service; its owner is itself
	Node    Kind = "node"    // a node's checks; its owner is itself
)

// Fields of a Route or Service point.
const (
	Req2xx  = iota // requests/s answered 1xx–3xx
	Req4xx         // requests/s answered 4xx
	Req5xx         // requests/s answered 5xx
	P50            // median latency over the interval, seconds
	P99            // 99th percentile latency over the interval, seconds
	Healthy        // healthy instances at the end of the interval
	trafficFields
)

// Fields of a Node point: how many of its checks are in each status.
const (
	Passing = iota
	Warning
	Critical // maintenance counts here, as the UI shows it
	nodeFields
)

// FieldNames are the names the endpoint gives each kind's fields.
var FieldNames = map[Kind][]string{
	Route:   {"2xx", "4xx", "5xx", "p50", "p99", "healthy"},
	Service: {"2xx", "4xx", "5xx", "p50", "p99", "healthy"},
	Node:    {"passing", "warning", "critical"},
}

func fieldCount(k Kind) int {
	if k == Node {
		return nodeFields
	}
	return trafficFields
}

// Source adds the current values of its series to each point. Sample is
// called from Run's goroutine only, never concurrently, once per Interval;
// it must not block.
type Source interface {
	Sample(r *Recorder)
}

// Config configures a Store. It is frozen after New.
type Config struct {
	Interval time.Duration // time between points
	Points   int           // points kept per series: Interval*Points is the window
	Sources  []Source
	Logger   *slog.Logger // nil: discard
}

// DefaultConfig keeps 15 minutes at 5 s, 180 points: a 4.3 KB ring for a
// route or service, 2.2 KB for a node.
func DefaultConfig() Config {
	return Config{
		Interval: 5 * time.Second, // fine enough to see a deploy, coarse enough to cost nothing
		Points:   180,             // 15 minutes
	}
}

// Store keeps the rings and takes a point of every series each Interval.
type Store struct {
	cfg Config
	log *slog.Logger

	mu     sync.RWMutex
	tick   uint64    // the newest point's number; 0 before the first
	at     time.Time // when the newest point was taken
	series map[seriesKey]*series
	sorted []*series // by kind then name; nil when series changed
}

type seriesKey struct {
	kind Kind
	name string
}

// series is one ring: vals holds Points points of fieldCount(kind) values,
// the point of tick t at slot t%Points. NaN is "not measured".
type series struct {
	kind  Kind
	name  string
	owner string // what a token must read to see it: a service or node name
	first uint64 // the tick of its first point
	seen  uint64 // the last tick a source set it
	vals  []float32
}

// New validates cfg and returns a Store with no points yet.
func New(cfg Config) (*Store, error) {
	if cfg.Interval <= 0 || cfg.Points < 2 {
		return nil, errors.New("history: Interval must be positive and Points at least 2")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{cfg: cfg, log: log, series: map[seriesKey]*series{}}, nil
}

// Interval is the time between points.
func (s *Store) Interval() time.Duration { return s.cfg.Interval }

// Run takes a point at once and then every Interval until ctx ends.
func (s *Store) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	last := time.Now()
	for {
		now := time.Now()
		s.Sample(now, now.Sub(last))
		last = now
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Recorder is what a Source writes a point through.
type Recorder struct {
	s       *Store
	slot    int
	elapsed time.Duration
}

// Elapsed is the time since the previous point (Interval, give or take;
// the whole uptime before the first), for sources that turn counters into
// rates.
func (r *Recorder) Elapsed() time.Duration { return r.elapsed }

// Set sets one field of the current point of a series, creating the series
// on its first value. owner is the service or node a token must be allowed
// to read to see the series.
func (r *Recorder) Set(kind Kind, name, owner string, field int, v float64) {
	s := r.s
	k := seriesKey{kind, name}
	se := s.series[k]
	n := fieldCount(kind)
	if se == nil {
		se = &series{kind: kind, name: name, owner: owner, first: s.tick, vals: make([]float32, s.cfg.Points*n)}
		for i := range se.vals {
			se.vals[i] = float32(math.NaN())
		}
		s.series[k] = se
		s.sorted = nil
	}
	if se.seen != s.tick {
		se.seen = s.tick
		clear := se.vals[r.slot*n : r.slot*n+n]
		for i := range clear {
			clear[i] = float32(math.NaN())
		}
	}
	if field >= 0 && field < n {
		se.vals[r.slot*n+field] = float32(v)
	}
}

// Sample takes one point of every series now; Run calls it every
// Interval, tests call it to take points without waiting.
func (s *Store) Sample(now time.Time, elapsed time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tick++
	s.at = now
	r := &Recorder{s: s, slot: int(s.tick % uint64(s.cfg.Points)), elapsed: elapsed}
	for _, src := range s.cfg.Sources {
		s.sample(src, r)
	}
	// A series no source set this time is of something gone: its ring goes
	// with it, so memory follows what exists.
	for k, se := range s.series {
		if se.seen != s.tick {
			delete(s.series, k)
			s.sorted = nil
		}
	}
	s.sort()
}

// sample runs one source; a source that panics loses its point, not the
// agent, and its series go (no source set them) until it recovers.
func (s *Store) sample(src Source, r *Recorder) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("history: a source failed", "source", fmt.Sprintf("%T", src), "panic", p)
		}
	}()
	src.Sample(r)
}

// sort orders the series by kind then name for readers, when the set of
// series changed; the caller holds the write lock.
func (s *Store) sort() {
	if s.sorted != nil {
		return
	}
	out := make([]*series, 0, len(s.series))
	for _, se := range s.series {
		out = append(out, se)
	}
	slices.SortFunc(out, func(a, b *series) int {
		if c := strings.Compare(string(a.kind), string(b.kind)); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	s.sorted = out
}
