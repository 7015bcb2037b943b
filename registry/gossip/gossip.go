package gossip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
)

// Config configures the gossip layer. It is frozen after New.
type Config struct {
	Registry         *registry.Registry    // required; its node name is the member name
	BindAddr         string                // default "0.0.0.0"
	BindPort         int                   // default 8301, Consul's serf LAN port; 0 picks a free port
	AdvertiseAddr    string                // the address others use; default: the registry node's address
	AdvertisePort    int                   // default: the bound port
	EncryptKey       []byte                // AES key (16, 24 or 32 bytes); nil: no encryption
	KeyringFile      string                // where rotated keys persist (in the data dir); it wins over EncryptKey
	Tags             map[string]string     // shown by pier members (dc, role, build, id)
	StartJoin        []string              // joined at start; failing to join any is an error, as Consul's -join
	RetryJoin        []string              // joined in the background with backoff until one answers
	RetryMax         time.Duration         // the longest pause between retry-join attempts; default 30s
	ReconnectTimeout time.Duration         // a failed node is reaped after this; default 72h, as Consul
	ReconnectEvery   time.Duration         // how often a failed node is tried again; default 30s, as Serf
	LeftRetention    time.Duration         // a node that left is listed as left this long; default 24h
	TombstoneTTL     time.Duration         // deleted entries are remembered this long; default 1h
	LeaveTimeout     time.Duration         // how long a graceful leave waits to be heard; default 5s
	MaxMembers       int                   // the most nodes one push/pull may list; default 10,000
	DigestInterval   time.Duration         // how often a digest goes to a random member to repair missed broadcasts; default 1s
	CoordinatePeriod time.Duration         // how often learned network coordinates are published; default 5s, as Consul batches them
	Logger           *slog.Logger          // nil: discard
	Registerer       prometheus.Registerer // nil: no metrics
	// Memberlist adjusts memberlist's configuration (DefaultLANConfig) last;
	// tests use it for timings and an in-memory transport.
	Memberlist func(*memberlist.Config)
}

// DefaultConfig returns Consul's defaults.
func DefaultConfig() Config {
	return Config{
		BindAddr:         "0.0.0.0",
		BindPort:         8301,
		RetryMax:         30 * time.Second,
		ReconnectTimeout: 72 * time.Hour,
		ReconnectEvery:   30 * time.Second,
		LeftRetention:    24 * time.Hour,
		TombstoneTTL:     time.Hour,
		LeaveTimeout:     5 * time.Second,
		MaxMembers:       10000,
		DigestInterval:   time.Second,
		CoordinatePeriod: 5 * time.Second,
	}
}

// Gossip is one agent's membership in the cluster.
type Gossip struct {
	cfg   Config
	reg   *registry.Registry
	log   *slog.Logger
	ml    *memberlist.Memberlist
	queue *memberlist.TransmitLimitedQueue
	in    *inbox
	met   *gossipMetrics // nil: no metrics
	ev    *events        // user events (events.go)
	coord *coordinates   // network coordinates (coordinate.go)

	mu           sync.Mutex
	members      map[string]*memberState
	leftIntent   map[string]time.Time // nodes that said they are leaving
	prune        map[string]bool      // alive nodes to drop from the list once gone (prune.go)
	leaving      bool
	keyring      *memberlist.Keyring // nil without encryption
	kr           keyringState
	reconnecting bool
	repairQ      chan func()               // TCP sends of the repair exchange, run by one worker
	lastOwners   int                       // owners in the last digest, to size the next (Run's goroutine only)
	lastRepair   time.Time                 // when this node last sent or answered a digest (Run's goroutine only)
	missing      map[string]*missingMember // members others named and this node does not know (joinMissing)
	joinState    stateCache                // the push/pull state last served to a joining node
	// sends tracks sendReliable's goroutines; sendSlots bounds how many
	// send at once; stopping (closed by Run's end) lets queued ones give up.
	sends       sync.WaitGroup
	sendSlots   chan struct{}
	stopping    chan struct{}
	sendMu      sync.Mutex // orders sends.Add before Run's sends.Wait
	sendsClosed bool
}

type memberState struct {
	registry.Member
	since time.Time // when the status last changed
}

// New validates cfg and creates the memberlist, bound and ready, but not yet
// joined to anyone: Run does that.
func New(cfg Config) (*Gossip, error) {
	if cfg.Registry == nil {
		return nil, errors.New("gossip: a registry is required")
	}
	def := DefaultConfig()
	if cfg.BindAddr == "" {
		cfg.BindAddr = def.BindAddr
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = def.RetryMax
	}
	if cfg.ReconnectTimeout <= 0 {
		cfg.ReconnectTimeout = def.ReconnectTimeout
	}
	if cfg.ReconnectEvery <= 0 {
		cfg.ReconnectEvery = def.ReconnectEvery
	}
	if cfg.LeftRetention <= 0 {
		cfg.LeftRetention = def.LeftRetention
	}
	if cfg.TombstoneTTL <= 0 {
		cfg.TombstoneTTL = def.TombstoneTTL
	}
	if cfg.LeaveTimeout <= 0 {
		cfg.LeaveTimeout = def.LeaveTimeout
	}
	if cfg.DigestInterval <= 0 {
		cfg.DigestInterval = def.DigestInterval
	}
	if cfg.MaxMembers <= 0 {
		cfg.MaxMembers = def.MaxMembers
	}
	if cfg.CoordinatePeriod <= 0 {
		cfg.CoordinatePeriod = def.CoordinatePeriod
	}
	switch len(cfg.EncryptKey) {
	case 0, 16, 24, 32:
	default:
		return nil, fmt.Errorf("gossip: encryption key must be 16, 24 or 32 bytes, not %d", len(cfg.EncryptKey))
	}
	g := &Gossip{kr: keyringState{waiting: map[uint64]chan KeyringResponse{}}, cfg: cfg, reg: cfg.Registry, log: cfg.Logger, in: newInbox(), ev: newEvents(), members: map[string]*memberState{}, leftIntent: map[string]time.Time{}, missing: map[string]*missingMember{}, repairQ: make(chan func(), maxDigestQ),
		sendSlots: make(chan struct{}, maxReliableSends), stopping: make(chan struct{})}
	if g.log == nil {
		g.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	self := g.reg.Self()
	mc := memberlist.DefaultLANConfig()
	mc.Name = self.Name
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	if mc.AdvertiseAddr == "" {
		mc.AdvertiseAddr = self.Address
	}
	if mc.BindPort == 0 {
		// memberlist advertises port 0 when given an address but no port, so
		// pick the free port here.
		port, err := FreePort(cfg.BindAddr)
		if err != nil {
			return nil, fmt.Errorf("gossip: %w", err)
		}
		mc.BindPort = port
	}
	mc.AdvertisePort = cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = mc.BindPort
	}
	kr, err := loadKeyring(cfg.KeyringFile)
	if err != nil {
		return nil, err
	}
	if kr == nil && cfg.EncryptKey != nil {
		if kr, err = memberlist.NewKeyring(nil, cfg.EncryptKey); err != nil {
			return nil, fmt.Errorf("gossip: %w", err)
		}
	}
	g.keyring = kr
	mc.Keyring = kr
	mc.Delegate = delegate{g}
	mc.Events = delegate{g}
	mc.Alive = delegate{g}
	if g.coord, err = newCoordinates(self.Name); err != nil {
		return nil, err
	}
	mc.Ping = pingDelegate{g.coord}
	mc.Logger = newStdLogger(g.log)
	// A node that comes back on another address (a rescheduled container)
	// may take its name back once its old self has been dead this long.
	mc.DeadNodeReclaimTime = 30 * time.Second
	// memberlist's LZW costs a 64 KiB table per datagram sent (a ping, an
	// ack, a digest), which made compression most of what an idle agent
	// allocated; pier deflates its own large messages and push/pull state
	// already. Compressed messages from others are still understood.
	mc.EnableCompression = false
	if cfg.Memberlist != nil {
		cfg.Memberlist(mc)
	}
	if g.met, err = newMetrics(cfg.Registerer, g); err != nil {
		return nil, fmt.Errorf("gossip: metrics: %w", err)
	}
	if mc.Transport == nil {
		nt, err := newNetTransport(mc.BindAddr, mc.BindPort, g.log, g.met.packetRejected)
		if err != nil {
			return nil, err
		}
		mc.Transport = nt
	}
	var guard *guardedTransport
	if nat, ok := mc.Transport.(memberlist.NodeAwareTransport); ok {
		guard = newGuardedTransport(nat, streamLimits{
			nodes: cfg.MaxMembers, bytes: maxState, timeout: mc.TCPTimeout, inflight: 16, waiting: 256,
		}, g.log, g.met.streamRejected)
		guard.packetRejected = g.met.packetRejected // for a test's transport
		mc.Transport = guard
	}
	// The queue exists before memberlist starts: its goroutines ask the
	// delegate for broadcasts as soon as the first packet arrives, which
	// may be before Create returns.
	var created atomic.Pointer[memberlist.Memberlist]
	g.queue = &memberlist.TransmitLimitedQueue{RetransmitMult: mc.RetransmitMult, NumNodes: func() int {
		if ml := created.Load(); ml != nil {
			return ml.NumMembers()
		}
		return 1
	}}
	ml, err := memberlist.Create(mc)
	if err != nil {
		if guard != nil {
			guard.Shutdown()
		}
		return nil, fmt.Errorf("gossip: %w", err)
	}
	g.ml = ml
	created.Store(ml)
	local := ml.LocalNode()
	g.members[self.Name] = &memberState{Member: registry.Member{
		Name: self.Name, Addr: local.Addr.String(), Port: int(local.Port), Tags: cfg.Tags, Status: registry.MemberAlive,
	}, since: time.Now()}
	g.reg.SetBroadcaster(g.broadcast)
	return g, nil
}

// FreePort picks a free port on host for the gossip listener (BindPort 0).
// The agent uses it too: its own catalog entry names the port before
// memberlist binds it.
//
// The port is free for TCP and UDP both (memberlist binds the two), and
// drawn below Linux's ephemeral range (32768 up): a port the kernel handed
// out for bind(0) is just as likely to be taken, between this check and
// memberlist's bind, by any process's next outgoing connection.
func FreePort(host string) (int, error) {
	for range 64 {
		port := 20000 + rand.IntN(32768-20000)
		if portFree(host, port) {
			return port, nil
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func portFree(host string, port int) bool {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// Addr is the address and port that other agents join.
func (g *Gossip) Addr() string {
	n := g.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// broadcast queues this node's changed entries. The registry calls it with
// its lock held, so it only encodes and queues.
func (g *Gossip) broadcast(entries []registry.Entry) {
	for _, e := range entries {
		g.queueEntry(e)
	}
}

func (g *Gossip) queueEntry(e registry.Entry) {
	msg, err := encodeEntry(e)
	if err != nil || len(msg) > maxBroadcast {
		// Too big for a packet: push/pull carries it.
		g.log.Debug("entry travels by push/pull only", "node", e.Node, "key", e.Key, "bytes", len(msg))
		return
	}
	name := e.Node + "\x00" + strconv.Itoa(int(e.Kind)) + "\x00" + e.Key
	g.queue.QueueBroadcast(&broadcast{name: name, msg: msg})
	g.met.broadcastQueued()
}

// Run joins the cluster and applies what gossip brings until ctx ends; then
// it leaves gracefully (others drop this node's services at once) and shuts
// memberlist down.
func (g *Gossip) Run(ctx context.Context) error {
	// Our entries as of now, for those that will not push/pull with us soon.
	for _, st := range g.reg.FullState()[:1] {
		for _, e := range st.Entries {
			g.queueEntry(e)
		}
	}
	// A node that joins learns of every member at once: its repair waits
	// for them to settle (repairPaused), and from now, not from the zero
	// time, which would let its first exchange through.
	g.lastRepair = time.Now()
	if len(g.cfg.StartJoin) > 0 {
		if n, err := g.ml.Join(g.cfg.StartJoin); n == 0 {
			g.ml.Shutdown()
			return fmt.Errorf("gossip: joining %v: %s", g.cfg.StartJoin, oneLine(err))
		}
		g.log.Info("joined the cluster", "addrs", g.cfg.StartJoin)
	}
	var wg sync.WaitGroup
	if len(g.cfg.RetryJoin) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.retryJoin(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.coord.run(ctx, g.cfg.CoordinatePeriod, g.knownNode)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case send := <-g.repairQ:
				send()
			case <-ctx.Done():
				return
			}
		}
	}()
	digest := time.NewTicker(g.cfg.DigestInterval)
	defer digest.Stop()
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	reconnect := time.NewTicker(g.cfg.ReconnectEvery)
	defer reconnect.Stop()
	for {
		select {
		case <-g.in.signal:
			g.process(g.in.take())
		case <-digest.C:
			g.sendDigest()
		case <-tick.C:
			g.reap(time.Now())
		case <-reconnect.C:
			g.reconnect(ctx, &wg)
		case <-ctx.Done():
			wg.Wait()
			g.sendMu.Lock()
			g.sendsClosed = true
			g.sendMu.Unlock()
			close(g.stopping)
			g.sends.Wait()
			return g.shutdown()
		}
	}
}

func (g *Gossip) shutdown() error {
	if err := g.Leave(); err != nil {
		g.log.Warn("leaving the cluster", "err", err)
	}
	return g.ml.Shutdown()
}

// process applies a batch of inbox items in order: membership first where
// memberlist reported it first, so a node's state never arrives before the
// node.
func (g *Gossip) process(items []item) {
	var batch []registry.Entry
	// A broadcast reaches this node from several members, often within
	// one batch: a copy no newer than one already in the batch or held by
	// the registry is not decoded (Merge would refuse it).
	batched := map[entryHeader]uint64{} // the newest version of each entry in batch
	held := func(h entryHeader) bool {
		v := h.Version
		h.Version = 0
		if b, ok := batched[h]; ok && b >= v {
			return true
		}
		return g.reg.Holds(h.Node, h.Kind, h.Key, v)
	}
	flush := func() {
		if len(batch) == 0 {
			return
		}
		for _, e := range g.reg.Merge(batch) {
			g.queueEntry(e) // news here is news to others: pass it on
		}
		batch = batch[:0]
		clear(batched)
	}
	for _, it := range items {
		switch it.kind {
		case itemMsg:
			switch it.buf[0] {
			case msgEntry, msgEntryZ:
				e, ok, err := decodeEntryIf(it.buf, held)
				if err != nil {
					g.log.Warn("dropping a gossip message that does not decode", "err", err)
					continue
				}
				if !ok {
					continue
				}
				h := entryHeader{Node: e.Node, Kind: e.Kind, Key: e.Key}
				batched[h] = max(batched[h], e.Version)
				batch = append(batch, e)
			case msgForceLeave:
				flush()
				g.forget(string(it.buf[1:])) // nothing to answer: an error here is this node or one unknown here
			case msgLeave:
				flush()
				g.leftIntentFrom(string(it.buf[1:]))
			case msgDigest:
				g.onDigest(it.buf[1:])
			case msgOwners:
				flush()
				g.onOwners(it.buf[1:])
			case msgStates:
				flush()
				g.onStates(it.buf[1:])
			case msgKeyring:
				g.onKeyringMsg(it.buf[1:])
			case msgKeyringReply:
				g.onKeyringReply(it.buf[1:])
			case msgEvent:
				g.onEvent(it.buf)
			}
		case itemState:
			flush()
			st, err := decodeState(it.buf)
			if err != nil {
				g.log.Warn("dropping a push/pull state that does not decode", "err", err)
				continue
			}
			g.ev.catchUp(st.EventClock)
			// What a push/pull taught us (a node that just joined, most
			// often) is passed on as broadcasts too, so that it spreads in
			// seconds rather than at the next push/pull of each node; a
			// large batch is left to push/pull.
			fresh := append(g.reg.MergeStates(st.Nodes), g.reg.Merge(st.KV)...)
			if len(fresh) <= maxForward {
				for _, e := range fresh {
					g.queueEntry(e)
				}
			}
		default:
			flush()
			g.member(it)
		}
	}
	flush()
}

// oneLine flattens memberlist's multi-line join errors ("1 error occurred:\n\t*
// failed to join ...") into one line for the log and the exit message.
func oneLine(err error) string {
	if err == nil {
		return "no address answered"
	}
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "* "))
		if l != "" && !strings.HasSuffix(l, "occurred:") {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}
