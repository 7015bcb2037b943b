package wan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/gossip"
)

// Config configures the pool. It is frozen after New.
type Config struct {
	NodeName      string              // required; the member is NodeName.Datacenter
	Datacenter    string              // required
	BindAddr      string              // default "0.0.0.0"
	BindPort      int                 // default 8302, Consul's serf WAN port; 0 picks a free port
	AdvertiseAddr string              // the address other servers use; default: the bound one
	Keyring       *memberlist.Keyring // shared with the LAN pool; nil: no encryption
	Tags          map[string]string   // the server's tags (role, id, port); dc is added
	StartJoin     []string            // joined at start; failing to join any is an error, as -join-wan
	RetryJoin     []string            // joined in the background until one answers
	RetryMax      time.Duration       // longest pause between retry-join attempts; default 30s
	// ReconnectEvery is how often failed members are tried again, so that
	// a healed WAN cut rejoins; default 30s, as Serf, or six probe
	// intervals when Timings make that shorter.
	ReconnectEvery time.Duration
	// ReconnectTimeout is when a failed member is dropped; default 72h,
	// as Consul's reconnect_timeout_wan.
	ReconnectTimeout time.Duration
	LeaveTimeout     time.Duration // how long a graceful leave waits to be heard; default 5s
	CoordinatePeriod time.Duration // how often learned coordinates are published; default 5s
	Timings          Timings       // memberlist's WAN timings unless set
	Logger           *slog.Logger  // nil: discard
	// Memberlist adjusts memberlist's configuration last (tests).
	Memberlist func(*memberlist.Config)
}

// Timings are Consul's gossip_wan settings; zero keeps memberlist's
// DefaultWANConfig value.
type Timings struct {
	GossipNodes    int
	GossipInterval time.Duration
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	RetransmitMult int
}

// Pool is one server's membership in the WAN pool.
type Pool struct {
	cfg   Config
	log   *slog.Logger
	ml    *memberlist.Memberlist
	coord *gossip.PoolCoordinates
	name  string

	mu      sync.Mutex
	members map[string]*state
	leaving bool
}

type state struct {
	registry.Member
	since time.Time
}

// MemberName is a server's name in the WAN pool: node.dc, as Consul's.
func MemberName(node, dc string) string { return node + "." + dc }

// New validates cfg and binds the pool; Run joins it.
func New(cfg Config) (*Pool, error) {
	if cfg.NodeName == "" || cfg.Datacenter == "" {
		return nil, errors.New("wan: a node name and a datacenter are required")
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "0.0.0.0"
	}
	reconnect := 30 * time.Second
	if pi := cfg.Timings.ProbeInterval; pi > 0 {
		reconnect = min(reconnect, 6*pi)
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&cfg.RetryMax, 30 * time.Second}, {&cfg.ReconnectEvery, reconnect}, {&cfg.ReconnectTimeout, 72 * time.Hour},
		{&cfg.LeaveTimeout, 5 * time.Second}, {&cfg.CoordinatePeriod, 5 * time.Second}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	p := &Pool{cfg: cfg, log: cfg.Logger, name: MemberName(cfg.NodeName, cfg.Datacenter), members: map[string]*state{}}
	if p.log == nil {
		p.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	tags := maps.Clone(cfg.Tags)
	if tags == nil {
		tags = map[string]string{}
	}
	tags["dc"] = cfg.Datacenter
	p.cfg.Tags = tags
	var err error
	if p.coord, err = gossip.NewPoolCoordinates(p.name); err != nil {
		return nil, err
	}
	mc := memberlist.DefaultWANConfig()
	mc.Name = p.name
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	if mc.BindPort == 0 {
		if mc.BindPort, err = gossip.FreePort(cfg.BindAddr); err != nil {
			return nil, fmt.Errorf("wan: %w", err)
		}
	}
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.AdvertisePort = mc.BindPort
	applyTimings(mc, cfg.Timings)
	mc.Keyring = cfg.Keyring
	mc.Delegate = delegate{p}
	mc.Events = delegate{p}
	mc.Ping = p.coord.PingDelegate()
	mc.Logger = gossip.MemberlistLogger(p.log)
	mc.DeadNodeReclaimTime = 30 * time.Second
	if cfg.Memberlist != nil {
		cfg.Memberlist(mc)
	}
	if p.ml, err = memberlist.Create(mc); err != nil {
		return nil, fmt.Errorf("wan: %w", err)
	}
	local := p.ml.LocalNode()
	p.members[p.name] = &state{Member: registry.Member{Name: p.name, Addr: local.Addr.String(), Port: int(local.Port), Tags: tags, Status: registry.MemberAlive}, since: time.Now()}
	return p, nil
}

func applyTimings(mc *memberlist.Config, t Timings) {
	if t.GossipNodes > 0 {
		mc.GossipNodes = t.GossipNodes
	}
	if t.GossipInterval > 0 {
		mc.GossipInterval = t.GossipInterval
	}
	if t.ProbeInterval > 0 {
		mc.ProbeInterval = t.ProbeInterval
	}
	if t.ProbeTimeout > 0 {
		mc.ProbeTimeout = t.ProbeTimeout
	}
	if t.SuspicionMult > 0 {
		mc.SuspicionMult = t.SuspicionMult
	}
	if t.RetransmitMult > 0 {
		mc.RetransmitMult = t.RetransmitMult
	}
}

// Addr is the address and port other servers join with -join-wan.
func (p *Pool) Addr() string {
	n := p.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Run joins the pool, keeps reconnecting failed members and publishes
// coordinates until ctx ends; then it shuts the pool down without a leave
// (a server that stops is failed to the others until it comes back, as
// Consul's servers, which do not leave on terminate).
func (p *Pool) Run(ctx context.Context) error {
	if len(p.cfg.StartJoin) > 0 {
		if _, err := p.ml.Join(p.cfg.StartJoin); err != nil {
			p.ml.Shutdown()
			return fmt.Errorf("wan: -join-wan: %w", err)
		}
	}
	var wg sync.WaitGroup
	if len(p.cfg.RetryJoin) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.retryJoin(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.coord.Run(ctx, p.cfg.CoordinatePeriod, p.known)
	}()
	t := time.NewTicker(p.cfg.ReconnectEvery)
	defer t.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
			p.reconnect(ctx)
			p.reap(time.Now())
		}
	}
	wg.Wait()
	return p.ml.Shutdown()
}

func (p *Pool) retryJoin(ctx context.Context) {
	wait := time.Second
	for attempt := 1; ; attempt++ {
		if n, err := p.ml.Join(p.cfg.RetryJoin); n > 0 {
			p.log.Info("joined the WAN pool", "addrs", p.cfg.RetryJoin, "attempt", attempt)
			return
		} else {
			p.log.Warn("retry-join-wan failed; will try again", "addrs", p.cfg.RetryJoin, "attempt", attempt, "in", wait, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, p.cfg.RetryMax)
	}
}

// reconnect tries each failed member once: memberlist stops probing a dead
// member, so a healed cut would otherwise stay split.
func (p *Pool) reconnect(ctx context.Context) {
	var addrs []string
	p.mu.Lock()
	for _, m := range p.members {
		if m.Status == registry.MemberFailed {
			addrs = append(addrs, net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)))
		}
	}
	p.mu.Unlock()
	for _, a := range addrs {
		if ctx.Err() != nil {
			return
		}
		if _, err := p.ml.Join([]string{a}); err == nil {
			p.log.Info("reconnected to a failed WAN member", "addr", a)
		}
	}
}

// reap drops members that left a day ago or failed ReconnectTimeout ago.
func (p *Pool) reap(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, m := range p.members {
		if m.Status == registry.MemberLeft && now.Sub(m.since) > 24*time.Hour ||
			m.Status == registry.MemberFailed && now.Sub(m.since) > p.cfg.ReconnectTimeout {
			delete(p.members, name)
		}
	}
}

func (p *Pool) known(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.members[name]
	return ok && m.Status != registry.MemberLeft
}

// Join contacts addrs (host or host:port, default port 8302) and answers
// how many answered.
func (p *Pool) Join(addrs []string) (int, error) {
	n, err := p.ml.Join(addrs)
	if n > 0 {
		return n, nil
	}
	return 0, err
}

// Leave tells the pool this server leaves, waiting up to LeaveTimeout for
// it to be heard.
func (p *Pool) Leave() error {
	// memberlist tells the others of a leave as of a death (the state it
	// hands NotifyLeave is stale), so the leave is announced first in the
	// member's meta, as the LAN pool announces its leave intent.
	p.mu.Lock()
	p.leaving = true
	p.mu.Unlock()
	if err := p.ml.UpdateNode(p.cfg.LeaveTimeout); err != nil {
		p.log.Warn("announcing the WAN leave", "err", err)
	}
	return p.ml.Leave(p.cfg.LeaveTimeout)
}

// Members answers every member known, this server among them, with its
// status (alive, failed, left) as pier members -wan lists them.
func (p *Pool) Members() []registry.Member {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]registry.Member, 0, len(p.members))
	for _, m := range p.members {
		out = append(out, m.Member)
	}
	return out
}

// delegate is memberlist's Delegate and EventDelegate for the pool.
type delegate struct{ p *Pool }

func (d delegate) NodeMeta(limit int) []byte {
	tags := d.p.cfg.Tags
	d.p.mu.Lock()
	if d.p.leaving {
		tags = maps.Clone(tags)
		tags[leavingTag] = "1"
	}
	d.p.mu.Unlock()
	b, _ := json.Marshal(tags)
	if len(b) > limit {
		return nil
	}
	return b
}

func (delegate) NotifyMsg([]byte)                           {}
func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

func (d delegate) NotifyJoin(n *memberlist.Node)   { d.p.set(n, registry.MemberAlive) }
func (d delegate) NotifyUpdate(n *memberlist.Node) { d.p.set(n, registry.MemberAlive) }
func (d delegate) NotifyLeave(n *memberlist.Node)  { d.p.set(n, registry.MemberFailed) }

// leavingTag in a member's meta says it is leaving: its death that follows
// is a leave.
const leavingTag = "leaving"

// set records n's state; a member whose meta does not decode keeps no tags
// and so counts as no server of any datacenter.
func (p *Pool) set(n *memberlist.Node, st registry.MemberStatus) {
	var tags map[string]string
	if len(n.Meta) > 0 && json.Unmarshal(n.Meta, &tags) != nil {
		tags = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	old, ok := p.members[n.Name]
	if ok && tags == nil {
		tags = old.Tags
		if old.Status == registry.MemberLeaving || old.Status == registry.MemberLeft {
			tags = maps.Clone(tags)
			tags[leavingTag] = "1"
		}
	}
	if tags[leavingTag] != "" {
		if st == registry.MemberFailed {
			st = registry.MemberLeft
		} else {
			st = registry.MemberLeaving
		}
		tags = maps.Clone(tags)
		delete(tags, leavingTag)
	}
	m := &state{Member: registry.Member{Name: n.Name, Addr: n.Addr.String(), Port: int(n.Port), Tags: tags, Status: st}, since: time.Now()}
	if ok && old.Status == st {
		m.since = old.since
	}
	p.members[n.Name] = m
	if !ok || old.Status != st {
		p.log.Info("WAN member", "name", n.Name, "status", st.String())
	}
}
