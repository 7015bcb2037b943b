package lb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
)

// Source is where the balancer reads the catalog: *registry.Registry.
type Source interface {
	Snapshot() *registry.Snapshot
}

// Config configures a Balancer. It is frozen after New. The json names are
// the keys of the config file's proxy section (registry.DecodeConfig reads
// them); "-" is not a file key.
type Config struct {
	Source         Source       `json:"-"`               // required
	Logger         *slog.Logger `json:"-"`               // nil: discard
	IncludeWarning bool         `json:"include_warning"` // warning instances are in pools too (default false: passing only, as Consul's ?passing)

	Registerer prometheus.Registerer `json:"-"` // nil: no metrics

	ConnectTimeout        time.Duration `json:"connect_timeout"` // connecting to a backend
	ReadTimeout           time.Duration `json:"read_timeout"`    // longest wait for the next byte from a backend (0: none)
	WriteTimeout          time.Duration `json:"write_timeout"`   // longest wait to send the next bytes to a backend (0: none)
	IdleConnTimeout       time.Duration `json:"keep_alive"`      // keep-alive connections idle longer are closed
	MaxConnsPerBackend    int           `json:"-"`               // connections open to one backend at most
	MaxConnWait           time.Duration `json:"-"`               // wait for a free connection when a backend has MaxConnsPerBackend
	MaxResponseHeaderSize int           `json:"-"`               // bytes; a larger response header from a backend is a 502
}

// DefaultConfig returns the balancer's defaults; Source must still be set.
func DefaultConfig() Config {
	return Config{
		ConnectTimeout:        5 * time.Second,  // a loopback or LAN backend that takes longer is not there
		ReadTimeout:           60 * time.Second, // nginx's proxy_read_timeout
		WriteTimeout:          60 * time.Second, // nginx's proxy_send_timeout
		IdleConnTimeout:       10 * time.Second, // below the keep-alive timeout of most servers, to avoid reusing a closing connection
		MaxConnsPerBackend:    4096,             // well above what one instance serves at once
		MaxConnWait:           time.Second,      // then the request tries another instance
		MaxResponseHeaderSize: 16 << 10,         // 16 KiB
	}
}

// Balancer keeps the table of pools up to date with the catalog.
type Balancer struct {
	cfg   Config
	log   *slog.Logger
	table atomic.Pointer[Table]
	kick  chan struct{} // capacity 1: a pending rebuild request
	met   *lbMetrics    // nil: no metrics

	mu       sync.Mutex          // serializes rebuilds
	backends map[string]*Backend // by address, reused across rebuilds
}

// New validates cfg and builds the first table from the current snapshot,
// so that the balancer is usable before Run starts.
func New(cfg Config) (*Balancer, error) {
	if cfg.Source == nil {
		return nil, errors.New("lb: a catalog source is required")
	}
	def := DefaultConfig()
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = def.ConnectTimeout
	}
	if cfg.ReadTimeout < 0 || cfg.WriteTimeout < 0 || cfg.IdleConnTimeout < 0 || cfg.MaxConnWait < 0 {
		return nil, errors.New("lb: timeouts must not be negative")
	}
	if cfg.IdleConnTimeout == 0 {
		cfg.IdleConnTimeout = def.IdleConnTimeout
	}
	if cfg.MaxConnsPerBackend <= 0 {
		cfg.MaxConnsPerBackend = def.MaxConnsPerBackend
	}
	if cfg.MaxResponseHeaderSize <= 0 {
		cfg.MaxResponseHeaderSize = def.MaxResponseHeaderSize
	}
	b := &Balancer{cfg: cfg, log: cfg.Logger, kick: make(chan struct{}, 1), backends: map[string]*Backend{}}
	if b.log == nil {
		b.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var err error
	if b.met, err = newMetrics(cfg.Registerer, b); err != nil {
		return nil, fmt.Errorf("lb: metrics: %w", err)
	}
	b.Rebuild()
	return b, nil
}

// ConnectTimeout is the limit on connecting to a backend, for callers that
// open their own connections (the proxy's WebSocket tunnels).
func (b *Balancer) ConnectTimeout() time.Duration { return b.cfg.ConnectTimeout }

// Config is the balancer's frozen configuration, defaults filled in: the
// timeouts and limits a caller that speaks to backends itself (the event
// loop's own upstream connections) keeps to.
func (b *Balancer) Config() Config { return b.cfg }

// Table returns the current table. It never blocks.
func (b *Balancer) Table() *Table { return b.table.Load() }

// Pool returns the pool of service, nil if no instance of it is in the
// catalog. It neither allocates nor locks.
func (b *Balancer) Pool(service string) *Pool { return b.table.Load().pools[service] }

// TagPool returns the pool of the instances of service that carry tag, a
// tag starting with RouteTagPrefix; nil if none in the catalog does. It
// neither allocates nor locks.
func (b *Balancer) TagPool(service, tag string) *Pool { return b.table.Load().TagPool(service, tag) }

// PortPool returns the pool of service's instances at their named port
// port, nil if none has it. It neither allocates nor locks.
func (b *Balancer) PortPool(service, port string) *Pool {
	return b.table.Load().PortPool(service, port)
}

// Refresh asks Run for a rebuild without waiting for it. Requests made
// while one is pending coalesce into it.
func (b *Balancer) Refresh() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Run rebuilds the table whenever the catalog changes, until ctx ends. The
// first change is applied at once; changes that arrive during a rebuild
// coalesce into one more rebuild from the newest snapshot.
func (b *Balancer) Run(ctx context.Context) error {
	for {
		snap := b.Rebuild()
		select {
		case <-ctx.Done():
			b.closeIdle()
			return nil
		case <-snap.Changed():
		case <-b.kick:
		}
	}
}

func (b *Balancer) closeIdle() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, be := range b.backends {
		be.closeIdle()
	}
}

// Rebuild builds a table from the newest snapshot, if it is newer than the
// current table's, swaps it in and returns the snapshot it used.
func (b *Balancer) Rebuild() *registry.Snapshot {
	if snap, t := b.cfg.Source.Snapshot(), b.table.Load(); t != nil && t.index == snap.Index() {
		return snap // up to date: no lock, so a flood of 404s costs two atomic loads each
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	snap := b.cfg.Source.Snapshot()
	old := b.table.Load()
	if old != nil && old.index == snap.Index() {
		return snap
	}
	t := &Table{index: snap.Index(), snap: snap, pools: map[string]*Pool{}, changed: make(chan struct{})}
	seen := make(map[string]*Backend, len(b.backends))
	var tps []*Pool // the tag pools of one instance
	for _, nt := range snap.ServiceNames() {
		ins := snap.ServiceInstances(nt.Name)
		p := &Pool{service: nt.Name, total: len(ins), members: make([]Member, 0, len(ins))}
		for _, in := range ins {
			tps = tps[:0]
			for _, tag := range in.Service.Tags {
				if !strings.HasPrefix(tag, RouteTagPrefix) {
					continue
				}
				k := tagKey{nt.Name, tag}
				tp := t.tagPools[k]
				if tp == nil {
					if t.tagPools == nil {
						t.tagPools = map[tagKey]*Pool{}
					}
					tp = &Pool{service: nt.Name}
					t.tagPools[k] = tp
				}
				if !slices.Contains(tps, tp) { // a tag listed twice is one
					tp.total++
					tps = append(tps, tp)
				}
			}
			for _, sp := range in.Service.Ports {
				// Totals count every instance with the port, healthy or not.
				k := tagKey{nt.Name, sp.Name}
				if t.portPools[k] == nil {
					if t.portPools == nil {
						t.portPools = map[tagKey]*Pool{}
					}
					t.portPools[k] = &Pool{service: nt.Name}
				}
				t.portPools[k].total++
			}
			w, ok := b.weight(in)
			if !ok || in.Service.Port == 0 {
				continue
			}
			host := in.Service.Address
			if host == "" {
				host = in.Node.Address
			}
			addr := net.JoinHostPort(host, strconv.Itoa(in.Service.Port))
			be := b.backends[addr]
			if be == nil {
				be = newBackend(addr, &b.cfg)
				b.backends[addr] = be
				b.log.Debug("backend added", "addr", addr)
			}
			seen[addr] = be
			m := Member{Backend: be, Weight: w, ID: in.Service.ID, Node: in.Node.Name}
			p.add(m)
			for _, tp := range tps {
				tp.add(m)
			}
			// Each named port of a multi-port instance is a backend of its
			// own, in the pool a route naming that port sends to.
			for _, sp := range in.Service.Ports {
				paddr := net.JoinHostPort(host, strconv.Itoa(sp.Port))
				pbe := b.backends[paddr]
				if pbe == nil {
					pbe = newBackend(paddr, &b.cfg)
					b.backends[paddr] = pbe
				}
				seen[paddr] = pbe
				k := tagKey{nt.Name, sp.Name}
				pp := t.portPools[k]
				if pp == nil {
					if t.portPools == nil {
						t.portPools = map[tagKey]*Pool{}
					}
					pp = &Pool{service: nt.Name}
					t.portPools[k] = pp
				}
				pp.add(Member{Backend: pbe, Weight: w, ID: in.Service.ID, Node: in.Node.Name})
			}
		}
		t.pools[nt.Name] = p
		t.services = append(t.services, ServiceTags{Name: nt.Name, Tags: nt.Tags})
	}
	for addr, be := range b.backends {
		if seen[addr] == nil {
			// Its in-flight requests finish on their connections; idle
			// ones are closed now, and the rest when they are released.
			be.closeIdle()
			delete(b.backends, addr)
			b.log.Debug("backend removed", "addr", addr, "in_flight", be.InFlight())
		}
	}
	b.table.Store(t)
	if old != nil {
		close(old.changed)
	}
	b.met.rebuilt(snap.Time())
	return snap
}

// weight returns the instance's weight and whether it belongs in a pool.
func (b *Balancer) weight(in registry.Instance) (int64, bool) {
	w := in.Service.Weights.Passing
	switch in.Status() {
	case registry.StatusPassing:
	case registry.StatusWarning:
		if !b.cfg.IncludeWarning {
			return 0, false
		}
		w = in.Service.Weights.Warning
	default:
		return 0, false
	}
	return int64(max(w, 1)), true
}

// add puts m in p; one address registered twice is one backend, with the
// larger weight.
func (p *Pool) add(m Member) {
	if i := memberIndex(p.members, m.Backend); i >= 0 {
		p.members[i].Weight = max(p.members[i].Weight, m.Weight)
		return
	}
	p.members = append(p.members, m)
}

func memberIndex(ms []Member, b *Backend) int {
	for i := range ms {
		if ms[i].Backend == b {
			return i
		}
	}
	return -1
}

// ServiceTags is a service name with the union of its instances' tags.
type ServiceTags struct {
	Name string
	Tags []string
}

// Table is the set of pools built from one catalog snapshot. It is
// immutable once published.
type Table struct {
	index     uint64
	snap      *registry.Snapshot // the snapshot it was built from
	pools     map[string]*Pool
	tagPools  map[tagKey]*Pool // nil when no instance has a route tag
	portPools map[tagKey]*Pool // by service and port name; nil when no instance has named ports
	services  []ServiceTags
	changed   chan struct{}
}

// Snapshot is the catalog snapshot the table was built from (nil for a
// table made in a test).
func (t *Table) Snapshot() *registry.Snapshot { return t.snap }

// Index is the catalog index the table was built from.
func (t *Table) Index() uint64 { return t.index }

// Pool returns the pool of service, nil if it has no instance.
func (t *Table) Pool(service string) *Pool { return t.pools[service] }

// RouteTagPrefix starts the tags that get a pool of their own: fabio's
// urlprefix- tags, with which an instance says it serves a route. Such a
// route must reach only the instances that carry the tag (during a rolling
// deploy, v2's instances carry a tag v1's do not), so the pool is built
// here, where the instances are, rather than filtered per request. Other
// tags (v1, primary, ...) get none: a pool per tag would cost every
// rebuild for nothing.
const RouteTagPrefix = "urlprefix-"

// tagKey names a tag pool. A struct of the two strings, not their
// concatenation, so that a lookup builds no string.
type tagKey struct{ service, tag string }

// TagPool returns the pool of the instances of service that carry tag
// (see RouteTagPrefix), nil if no instance in the catalog does.
func (t *Table) TagPool(service, tag string) *Pool { return t.tagPools[tagKey{service, tag}] }

// PortPool returns the pool of the instances of service at their port
// called port (a multi-port service's Ports), nil if no instance in the
// catalog has such a port.
func (t *Table) PortPool(service, port string) *Pool { return t.portPools[tagKey{service, port}] }

// Services lists every service in the catalog with its tags, by name.
func (t *Table) Services() []ServiceTags { return t.services }

// Changed is closed when a newer table replaces this one.
func (t *Table) Changed() <-chan struct{} { return t.changed }

// String is for logs.
func (t *Table) String() string {
	return fmt.Sprintf("lb table at index %d, %d services", t.index, len(t.pools))
}
