package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
)

// Config is one server's Raft settings.
type Config struct {
	// ID names this server in the Raft configuration; it must stay the same
	// across restarts (the node's ID or name).
	ID string
	// DataDir holds the log and stable store under raft/ (store.go: a
	// WAL in raft/wal, or bbolt's raft/raft.db) and raft/snapshots; empty:
	// everything in memory (-dev), gone at exit.
	DataDir string
	// LogStore is Consul's raft_logstore.backend: LogStoreWAL or
	// LogStoreBoltDB; "" keeps what the data dir holds and gives a new one
	// the WAL. A value that contradicts the data dir is an error.
	LogStore string
	// WALSegmentSize is the size of the WAL's preallocated segment files.
	WALSegmentSize int // default DefaultWALSegmentSize
	// Bind is the address of the Raft transport (Consul's server port).
	Bind string // default "127.0.0.1:8300"
	// Advertise is the address the other servers dial; empty: Bind, which
	// must then not be a wildcard.
	Advertise string
	// ApplyTimeout bounds how long a write waits to be committed.
	ApplyTimeout time.Duration // default 10s
	// SnapshotThreshold is how many log entries make a snapshot (and let
	// the log be truncated).
	SnapshotThreshold uint64 // default 8192, as hashicorp/raft
	Logger            *slog.Logger
	// Tune adjusts hashicorp/raft's own settings (tests shorten timeouts).
	Tune func(*hraft.Config)
	// Port, when set, carries Raft instead of a listener on Bind (then
	// Bind and Advertise are not used); the agent owns and closes it.
	Port *ServerPort
	// CleanupDeadServers is how long a server gossip sees as failed stays
	// in the Raft configuration before the leader removes it (autopilot.go);
	// 0 never removes failed servers (left ones still go at once).
	CleanupDeadServers time.Duration // DefaultConfig: 30s
}

// logCacheSize is how many of the newest log entries stay in memory for
// replication: more than a few batches of MaxAppendEntries.
const logCacheSize = 1024

// DefaultConfig answers the defaults; ID is left for the caller.
func DefaultConfig() Config {
	return Config{
		Bind:              "127.0.0.1:8300",
		ApplyTimeout:      10 * time.Second,
		SnapshotThreshold: 8192,
		// Long enough that a server being restarted or upgraded keeps its
		// place, short enough that a dead one stops counting towards the
		// quorum within a minute.
		CleanupDeadServers: 30 * time.Second,
	}
}

// Errors a caller maps onto Consul's answers.
var (
	// ErrNotLeader: this server cannot answer; forward to the leader.
	ErrNotLeader = errors.New("raft: not the leader")
	// ErrNoLeader is Consul's "No cluster leader".
	ErrNoLeader = errors.New("No cluster leader")
	// ErrUncertain: the command was proposed but leadership was lost before
	// it committed, so it may or may not take effect; not to be retried
	// blindly.
	ErrUncertain = errors.New("raft: leadership lost while committing; the write may or may not have been applied")
)

// Node is one server's Raft participant and its state machine.
type Node struct {
	cfg       Config
	log       *slog.Logger
	fsm       *FSM
	raft      *hraft.Raft
	transport *hraft.NetworkTransport
	closers   []io.Closer
	// readReady is set once this leader has applied everything committed
	// before its term (a barrier), so its own state answers reads.
	readReady atomic.Bool
	// bootIndex is the last log index on disk at start: until the state
	// machine has applied that far, a restarted server's state is older
	// than what it had already shown (CaughtUp).
	bootIndex uint64
	room      roomCache // room.go
	store     string    // LogStoreWAL or LogStoreBoltDB; "" in memory
	timers    sessionTimers
	group     group         // servers.go
	down      chan struct{} // closed once Raft has shut down
}

// New opens the stores and starts the Raft participant. A server with no
// state waits to be bootstrapped (Bootstrap) or added by a leader.
func New(cfg Config) (*Node, error) {
	def := DefaultConfig()
	if cfg.ID == "" {
		return nil, errors.New("raft: ID is empty")
	}
	if cfg.Bind == "" {
		cfg.Bind = def.Bind
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = def.ApplyTimeout
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = def.SnapshotThreshold
	}
	if cfg.WALSegmentSize == 0 {
		cfg.WALSegmentSize = DefaultWALSegmentSize
	}
	if cfg.WALSegmentSize < MinWALSegmentSize || cfg.WALSegmentSize > MaxWALSegmentSize {
		return nil, fmt.Errorf("raft: raft_logstore.wal.segment_size_mb: %d bytes is out of range (1 to 1024 MiB)", cfg.WALSegmentSize)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, log: log, fsm: NewFSM(nil), down: make(chan struct{})}
	n.timers.expire = n.expireSession
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{log}})

	var err error
	if cfg.Port != nil {
		n.transport = hraft.NewNetworkTransportWithLogger(cfg.Port.streamLayer(), 3, 10*time.Second, hlog)
	} else {
		adv, err := advertiseAddr(cfg)
		if err != nil {
			return nil, err
		}
		n.transport, err = hraft.NewTCPTransportWithLogger(cfg.Bind, adv, 3, 10*time.Second, hlog)
		if err != nil {
			return nil, fmt.Errorf("raft: listening on %s: %w", cfg.Bind, err)
		}
	}
	n.closers = append(n.closers, n.transport)
	var sec *Security
	if cfg.Port != nil {
		sec = cfg.Port.Security()
	}
	n.group.init(sec)

	var logs hraft.LogStore
	var stable hraft.StableStore
	var snaps hraft.SnapshotStore
	if cfg.DataDir == "" {
		mem := hraft.NewInmemStore()
		logs, stable, snaps = mem, mem, hraft.NewInmemSnapshotStore()
	} else {
		dir := filepath.Join(cfg.DataDir, "raft")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			n.close()
			return nil, fmt.Errorf("raft: data dir: %w", err)
		}
		backend, err := storeBackend(dir, cfg.LogStore)
		if err != nil {
			n.close()
			return nil, err
		}
		st, err := openStores(dir, backend, cfg.WALSegmentSize, hlog)
		if err != nil {
			n.close()
			return nil, err
		}
		// Closed in reverse: the guard first, then the stores.
		guard := &stableGuard{StableStore: st.stable}
		n.closers = append(n.closers, st.closer, guard)
		n.store = backend
		// The leader reads back each entry it sends to a follower (and
		// the one before it); the newest entries are kept in memory, as
		// Consul's servers do, rather than read from the store and decoded
		// again. Entries reach the cache only once the store has them.
		cached, err := hraft.NewLogCache(logCacheSize, st.logs)
		if err != nil {
			n.close()
			return nil, fmt.Errorf("raft: log cache: %w", err)
		}
		logs, stable = cached, guard
		if snaps, err = hraft.NewFileSnapshotStoreWithLogger(dir, 2, hlog); err != nil {
			n.close()
			return nil, fmt.Errorf("raft: snapshots: %w", err)
		}
	}

	rc := hraft.DefaultConfig()
	rc.LocalID = hraft.ServerID(cfg.ID)
	rc.Logger = hlog
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	// Group commit: the leader stores every write waiting for it in one
	// log append (one fsync) and sends it to the followers in one
	// AppendEntries, which each store with one fsync too. A buffered apply
	// channel lets writers queue while the leader is in an fsync instead
	// of each waiting for the leader loop to take it, and a larger batch
	// lets a follower that fell behind catch up in fewer fsyncs. Neither
	// changes what is durable: a write is answered only once a quorum has
	// it on disk. (A write queued when leadership is lost is answered
	// ErrNotLeader: it never reached the log.)
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	if cfg.Tune != nil {
		cfg.Tune(rc)
	}
	n.raft, err = hraft.NewRaft(rc, n.fsm, logs, stable, snaps, n.transport)
	if err != nil {
		n.close()
		return nil, fmt.Errorf("raft: %w", err)
	}
	n.bootIndex = n.raft.LastIndex()
	return n, nil
}

// CaughtUp reports whether the state machine has applied the whole log this
// server had on disk when it started. hashicorp/raft restores the newest
// snapshot at once but applies the entries after it only once they are
// known committed (after an election, or from the leader), so a restarted
// server's state goes back in time until then.
func (n *Node) CaughtUp() bool { return n.raft.AppliedIndex() >= n.bootIndex }

func advertiseAddr(cfg Config) (net.Addr, error) {
	a := cfg.Advertise
	if a == "" {
		a = cfg.Bind
	}
	addr, err := net.ResolveTCPAddr("tcp", a)
	if err != nil {
		return nil, fmt.Errorf("raft: advertise address %q: %w", a, err)
	}
	if addr.IP == nil || addr.IP.IsUnspecified() || addr.Port == 0 {
		if cfg.Advertise == "" {
			return nil, nil // the transport advertises what it bound
		}
		return nil, fmt.Errorf("raft: advertise address %q is not one other servers can dial", a)
	}
	return addr, nil
}

func (n *Node) close() {
	for i := len(n.closers) - 1; i >= 0; i-- {
		n.closers[i].Close()
	}
}

// Server is one member of the Raft configuration.
type Server struct {
	ID      string
	Address string
	Voter   bool
}

// Addr is the address this server's transport advertises.
func (n *Node) Addr() string { return string(n.transport.LocalAddr()) }

// ID is this server's Raft ID.
func (n *Node) ID() string { return n.cfg.ID }

// Bootstrap makes the first configuration of a new group, once: a server
// that already has Raft state ignores it (so every server of a
// bootstrap-expect group may call it with the same list, as Consul's do).
func (n *Node) Bootstrap(servers []Server) error {
	var c hraft.Configuration
	for _, s := range servers {
		c.Servers = append(c.Servers, hraft.Server{Suffrage: hraft.Voter, ID: hraft.ServerID(s.ID), Address: hraft.ServerAddress(s.Address)})
	}
	err := n.raft.BootstrapCluster(c).Error()
	if errors.Is(err, hraft.ErrCantBootstrap) {
		return nil
	}
	return err
}

// Run follows leadership (a new leader first applies a barrier before it
// answers reads from its own state) until ctx ends, then shuts Raft down.
func (n *Node) Run(ctx context.Context) error {
	defer n.close()
	// The reconcile loop (servers.go) stops with ctx; it is waited for
	// after Shutdown, which answers any change it still waits on.
	loopDone := make(chan struct{})
	go func() { defer close(loopDone); n.reconcileLoop(ctx) }()
	defer func() { <-loopDone }()
	leaderCh := n.raft.LeaderCh()
	for {
		select {
		case <-ctx.Done():
			n.readReady.Store(false)
			n.timers.stop()
			n.handOver()
			err := n.raft.Shutdown().Error()
			close(n.down)
			if err != nil {
				return fmt.Errorf("raft: shutdown: %w", err)
			}
			return nil
		case leader := <-leaderCh:
			n.readReady.Store(false)
			n.timers.stop()
			if !leader {
				continue
			}
			if err := n.raft.Barrier(n.cfg.ApplyTimeout).Error(); err != nil {
				n.log.Warn("raft: barrier after election", "err", err)
				continue
			}
			n.timers.lead(n.fsm.State())
			n.readReady.Store(n.raft.State() == hraft.Leader)
			n.group.wake() // reconcile the servers at once
			n.log.Info("raft: leading", "id", n.cfg.ID)
		}
	}
}

// handOver gives the leadership to another voter before a leader stops
// (SIGTERM, pier leave), so the group has a leader again within a round
// trip instead of an election timeout. A server of one, or a transfer that
// does not finish in time, just stops.
func (n *Node) handOver() {
	if n.raft.State() != hraft.Leader {
		return
	}
	f := n.raft.LeadershipTransfer()
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err == nil {
			n.log.Info("raft: handed the leadership over before stopping")
		}
	case <-time.After(n.cfg.ApplyTimeout):
	}
}

// State answers this server's newest applied state (possibly stale).
func (n *Node) State() *State { return n.fsm.State() }

// FSM exposes the state machine (lock delays).
func (n *Node) FSM() *FSM { return n.fsm }

// IsLeader reports whether this server leads and may answer default reads.
func (n *Node) IsLeader() bool { return n.raft.State() == hraft.Leader && n.readReady.Load() }

// Leader answers the leader's address and ID ("" when none is known).
func (n *Node) Leader() (addr, id string) {
	a, i := n.raft.LeaderWithID()
	return string(a), string(i)
}

// LastContact is when this server last heard from the leader (now, on the
// leader).
func (n *Node) LastContact() time.Time {
	if n.raft.State() == hraft.Leader {
		return time.Now()
	}
	return n.raft.LastContact()
}

// leaderErr tells a caller that cannot go on here where to go.
func (n *Node) leaderErr() error {
	if a, _ := n.Leader(); a == "" {
		return ErrNoLeader
	}
	return ErrNotLeader
}

// apply commits a command; ErrNotLeader or ErrNoLeader when this server
// does not lead.
func (n *Node) apply(c command) (Result, error) {
	if n.raft.State() != hraft.Leader {
		return Result{}, n.leaderErr()
	}
	b, err := encode(c)
	if err != nil {
		return Result{}, err
	}
	if err := n.roomFor(len(b)); err != nil {
		return Result{}, err
	}
	f := n.raft.Apply(b, n.cfg.ApplyTimeout)
	if err := n.await(f); err != nil {
		switch {
		case errors.Is(err, hraft.ErrNotLeader), errors.Is(err, hraft.ErrLeadershipTransferInProgress):
			return Result{}, n.leaderErr() // refused before it reached the log
		case errors.Is(err, hraft.ErrLeadershipLost), errors.Is(err, hraft.ErrRaftShutdown):
			return Result{}, ErrUncertain
		}
		return Result{}, fmt.Errorf("raft: apply: %w", err)
	}
	return f.Response().(Result), nil
}

// KV applies one KV write.
func (n *Node) KV(op KVOp) (Result, error) { return n.apply(command{Type: cmdKV, Ops: []KVOp{op}}) }

// Txn applies KV operations atomically.
func (n *Node) Txn(ops []KVOp) (Result, error) { return n.apply(command{Type: cmdTxn, Ops: ops}) }

// CreateSession stores a session the caller validated (ParseTTL, its node
// and checks healthy) and starts its TTL.
func (n *Node) CreateSession(s Session) (Result, error) {
	ttl, err := ParseTTL(s.TTL)
	if err != nil {
		return Result{}, err
	}
	r, err := n.apply(command{Type: cmdSessionCreate, Session: &s})
	if err == nil && r.Err == nil {
		n.timers.reset(s.ID, ttl)
	}
	return r, err
}

// DestroySession removes a session and frees its locks.
func (n *Node) DestroySession(id string) (Result, error) {
	r, err := n.apply(command{Type: cmdSessionDestroy, ID: id})
	if err == nil {
		n.timers.clear(id)
	}
	return r, err
}

// ConsistentState answers the state after confirming with a quorum that
// this server still leads (Consul's ?consistent).
func (n *Node) ConsistentState() (*State, error) {
	if !n.IsLeader() {
		return nil, n.leaderErr()
	}
	if err := n.wait(n.raft.VerifyLeader()); err != nil {
		return nil, n.leaderErr()
	}
	return n.fsm.State(), nil
}

// wait bounds a future's wait by ApplyTimeout: hashicorp/raft never
// answers a VerifyLeader that was queued when it shut down.
func (n *Node) wait(f hraft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(n.cfg.ApplyTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("raft: no answer within %v", n.cfg.ApplyTimeout)
	}
}

// await answers f's error. hashicorp/raft drops the committed entries
// still queued for its state machine when it shuts down and never answers
// their futures, so once Raft is down an unanswered future answers
// ErrRaftShutdown (a write: ErrUncertain) and the goroutine reading it
// stays, as wait's.
func (n *Node) await(f hraft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.down:
		select {
		case err := <-done:
			return err
		default:
			return hraft.ErrRaftShutdown
		}
	}
}

// Configuration answers the servers of the newest configuration.
func (n *Node) Configuration() ([]Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft: configuration: %w", err)
	}
	var out []Server
	for _, s := range f.Configuration().Servers {
		out = append(out, Server{ID: string(s.ID), Address: string(s.Address), Voter: s.Suffrage == hraft.Voter})
	}
	return out, nil
}

// AddVoter adds (or re-adds at a new address) a server; leader only.
func (n *Node) AddVoter(id, addr string) error {
	if n.raft.State() != hraft.Leader {
		return n.leaderErr()
	}
	return n.await(n.raft.AddVoter(hraft.ServerID(id), hraft.ServerAddress(addr), 0, n.cfg.ApplyTimeout))
}

// RemoveServer removes a server; leader only.
func (n *Node) RemoveServer(id string) error {
	if n.raft.State() != hraft.Leader {
		return n.leaderErr()
	}
	return n.await(n.raft.RemoveServer(hraft.ServerID(id), 0, n.cfg.ApplyTimeout))
}

// TransferLeadership hands leadership to the voter id, or to the most
// up-to-date other voter when id is ""; leader only. It returns once
// another server leads, or with hashicorp/raft's error.
func (n *Node) TransferLeadership(id string) error {
	if n.raft.State() != hraft.Leader {
		return n.leaderErr()
	}
	if id == "" {
		return n.await(n.raft.LeadershipTransfer())
	}
	servers, err := n.Configuration()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.ID == id {
			return n.await(n.raft.LeadershipTransferToServer(hraft.ServerID(id), hraft.ServerAddress(s.Address)))
		}
	}
	return fmt.Errorf("id %q was not found in the Raft configuration", id)
}

// Stats are hashicorp/raft's, for /v1/agent/self's raft section.
func (n *Node) Stats() map[string]string { return n.raft.Stats() }

// slogWriter hands hclog's lines to the agent's logger.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	switch {
	case strings.Contains(line, "[ERROR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	case strings.Contains(line, "[DEBUG]"), strings.Contains(line, "[TRACE]"):
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}
