package registry

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Source says where a local registration came from. Only API registrations
// are persisted: config files are read again at start, and the agent's own
// service is made by the agent.
type Source string

const (
	SourceAPI    Source = "api"
	SourceConfig Source = "config"
	SourceAgent  Source = "agent"
)

// Errors callers tell apart (the API maps them onto status codes).
var (
	ErrNotFound  = errors.New("not found")
	ErrProtected = errors.New("protected")
	// ErrNoPath: a datacenter no server knows of, or none of whose
	// servers is alive (Consul's "No path to datacenter").
	ErrNoPath = errors.New("No path to datacenter")
)

// AgentServiceID is the ID and name of the service every agent registers for
// itself, as a Consul agent lists "consul".
const AgentServiceID = "consul"

// SerfCheckID is the node check that says whether the node is alive.
const SerfCheckID = "serfHealth"

// Config configures a Registry. It is frozen after New.
type Config struct {
	NodeName   string            // required
	NodeID     string            // a UUID; empty: read from the data dir's node-id file, or made and kept there
	Address    string            // the node's address as others reach it; required
	Datacenter string            // default "dc1"
	NodeMeta   map[string]string // the node's Meta, besides consul-network-segment and consul-version
	Version    string            // the agent's version, in the node's Meta as consul-version
	Locality   *Locality         // the agent's region and zone (Consul's locality); nil: none
	DataDir    string            // where this node's registrations persist; empty: in memory only
	AgentPort  int               // port of the agent's own "consul" service entry
	Logger     *slog.Logger      // nil: discard
	Now        func() time.Time  // nil: time.Now; tests inject a clock
	KVMaxBytes int64             // local KV writes are refused past this many bytes of keys and values; 0: no limit

	Registerer prometheus.Registerer // nil: no metrics
}

// DefaultConfig returns a Config with Consul's defaults; NodeName and Address
// must still be set.
func DefaultConfig() Config {
	return Config{
		Datacenter: "dc1", // Consul's default datacenter
		AgentPort:  8301,  // the gossip port, which every pier agent serves
	}
}

// Registry is the catalog of one agent: the single writer of this node's
// records, and the publisher of snapshots of the whole cluster.
type Registry struct {
	cfg   Config
	log   *slog.Logger
	store *store // nil without a data dir

	mu          sync.Mutex // serializes writers; readers use snap
	index       uint64
	t           tables
	local       map[string]localService // this node's services by ID
	localChecks map[string]localCheck   // this node's checks by ID (service and standalone)
	repl        map[string]*nodeRepl    // versioned entries of every node, this one included
	clock       clock
	bcast       func([]Entry)
	deferred    []Check               // persisted checks whose service New did not know yet
	saved       map[string]CheckState // TTL check states from the data dir, until their check is registered
	restored    map[string]CheckState // states given to checks, until the health runner takes them
	stateMu     sync.Mutex            // orders the writes of check states
	kvTombs     map[string]Entry      // deleted keys of the KV store, until collected
	tableIndex  [numTables]uint64     // the last change to nodes, services, checks and KV (txn.go)
	kvBytes     int64                 // keys and values held, for Config.KVMaxBytes
	snap        atomic.Pointer[Snapshot]
	agreedState // what the servers agree on, merged in (agreed.go)
}

type localService struct {
	Source  Source
	Service Service
	Checks  []string // IDs of the checks registered with the service
}

type localCheck struct {
	Source Source
	Check  Check
	Owned  bool // registered with its service, and removed with it
}

// New validates cfg, loads this node's persisted registrations from the data
// dir and publishes the first snapshot.
func New(cfg Config) (*Registry, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("registry: node name is required")
	}
	if err := validName("node name", cfg.NodeName, true); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if cfg.Address == "" {
		return nil, errors.New("registry: node address is required")
	}
	if cfg.Datacenter == "" {
		cfg.Datacenter = "dc1"
	}
	if err := ValidateMeta("node meta", cfg.NodeMeta); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if cfg.NodeID != "" {
		id, err := ParseNodeID(cfg.NodeID)
		if err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		cfg.NodeID = id
	}
	// The keys Consul's agent adds to its node's Meta, which clients and
	// UIs read; a user's meta may not use the consul- prefix.
	meta := make(map[string]string, len(cfg.NodeMeta)+2)
	maps.Copy(meta, cfg.NodeMeta)
	meta["consul-network-segment"] = "" // pier has no network segments
	meta["consul-version"] = cfg.Version
	if err := cfg.Locality.Validate("locality"); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r := &Registry{
		cfg:         cfg,
		log:         cfg.Logger,
		t:           newTables(),
		local:       map[string]localService{},
		localChecks: map[string]localCheck{},
		restored:    map[string]CheckState{},
		repl:        map[string]*nodeRepl{cfg.NodeName: {entries: map[entryKey]Entry{}, member: MemberAlive}},
		kvTombs:     map[string]Entry{},
	}
	r.clock.now = cfg.Now
	if r.clock.now == nil {
		r.clock.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var saved []persisted
	var savedChecks []persistedCheck
	var savedKV []Entry
	if cfg.DataDir != "" {
		st, err := openStore(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		r.store = st
		if r.cfg.NodeID == "" {
			if r.cfg.NodeID, err = st.nodeID(); err != nil {
				return nil, err
			}
		}
		if saved, savedChecks, err = st.load(); err != nil {
			return nil, err
		}
		var skipped []string
		if savedKV, skipped, err = st.loadKV(); err != nil {
			return nil, err
		}
		for _, path := range skipped {
			r.log.Warn("KV file not loaded: its key is not valid UTF-8 and was changed when written by an older version (remove it)", "file", path)
		}
		r.saved = st.loadStates(time.Now(), func(path string, err error) {
			r.log.Warn("check state not restored", "file", path, "err", err)
		})
		// Versions must grow across restarts even if the wall clock went
		// back: start past every version persisted.
		for _, p := range saved {
			r.clock.observe(p.Version)
		}
	}
	if r.cfg.NodeID == "" {
		r.cfg.NodeID = NewUUID()
	}

	tx := r.begin()
	tx.loadKV(savedKV)
	tx.local(Entry{Kind: KindNode, NodeInfo: &Node{
		ID: r.cfg.NodeID, Name: cfg.NodeName, Address: cfg.Address, Datacenter: cfg.Datacenter,
		TaggedAddresses: map[string]string{"lan": cfg.Address, "lan_ipv4": cfg.Address, "wan": cfg.Address, "wan_ipv4": cfg.Address},
		Meta:            meta,
		Locality:        cfg.Locality,
	}})
	// serfHealth is each observer's own judgement of a node: never gossiped.
	tx.upsertCheck(cfg.NodeName, serfCheck(true))
	agent := Service{ID: AgentServiceID, Name: AgentServiceID, Tags: []string{}, Port: cfg.AgentPort, Weights: Weights{Passing: 1, Warning: 1}}
	r.registerLocked(tx, agent, nil, SourceAgent)
	for _, p := range saved {
		r.registerLocked(tx, p.Service, p.Checks, SourceAPI)
	}
	for _, p := range savedChecks {
		if lc, ok := r.localChecks[p.Check.CheckID]; ok && lc.Owned {
			// A standalone check that a later registration of its service
			// took over (RegisterCheck refuses the other order), whose file
			// that registration could not remove: the service's file wins.
			if err := r.store.removeCheck(p.Check.CheckID); err != nil {
				r.log.Warn("removing a superseded check file", "check", p.Check.CheckID, "err", err)
			}
			continue
		}
		if _, ok := r.local[p.Check.ServiceID]; p.Check.ServiceID != "" && !ok {
			// Most likely a check (maintenance, say) on a service from a
			// config file, which the agent registers after New.
			r.deferred = append(r.deferred, p.Check)
			continue
		}
		if err := r.registerCheckLocked(tx, p.Check, SourceAPI); err != nil {
			r.log.Warn("persisted check not restored", "check", p.Check.CheckID, "err", err)
		}
	}
	tx.commit()
	if err := registerMetrics(cfg.Registerer, r); err != nil {
		return nil, fmt.Errorf("registry: metrics: %w", err)
	}
	r.log.Info("catalog loaded", "node", cfg.NodeName, "services", len(saved), "checks", len(savedChecks))
	return r, nil
}

// Snapshot returns the current catalog view. It never blocks.
func (r *Registry) Snapshot() *Snapshot { return r.snap.Load() }

// Self returns this node.
func (r *Registry) Self() Node {
	n, _ := r.Snapshot().Node(r.cfg.NodeName)
	return n.Node
}

// Config returns the registry's configuration, with the node ID filled in.
func (r *Registry) Config() Config { return r.cfg }

// RegisterService adds or replaces a service of this node. Checks given with
// the service replace those of an earlier registration with the same ID, as
// in Consul.
func (r *Registry) RegisterService(s Service, checks []Check, src Source) error {
	if s.ID == AgentServiceID && src != SourceAgent {
		return fmt.Errorf("registry: service ID %q is the agent's own: %w", s.ID, ErrProtected)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range checks {
		if lc, ok := r.localChecks[c.CheckID]; ok && lc.Check.ServiceID != s.ID {
			return &FieldError{Field: "CheckID", Msg: fmt.Sprintf("check %q already belongs to another service or the node", c.CheckID)}
		}
	}
	if r.unchanged(s, checks, src) {
		// Registrator and friends re-register on every resync: an identical
		// registration must not move the index and wake every watcher.
		return nil
	}
	if err := r.persistService(s, checks, src); err != nil {
		return err
	}
	// A standalone check of the service taken over by this registration now
	// belongs to it. Its own file is removed; one left behind by a failed
	// removal is ignored and removed at the next start (New), since the
	// service's file, already durable, lists the check.
	for _, c := range checks {
		if lc, ok := r.localChecks[c.CheckID]; ok && !lc.Owned && lc.Source == SourceAPI && r.store != nil {
			if err := r.store.removeCheck(c.CheckID); err != nil {
				r.log.Warn("removing persisted check", "check", c.CheckID, "err", err)
			}
		}
	}
	tx := r.begin()
	r.registerLocked(tx, s, checks, src)
	tx.commit()
	return nil
}

func (r *Registry) persistService(s Service, checks []Check, src Source) error {
	if r.store == nil {
		return nil
	}
	if src == SourceAPI {
		return r.store.saveService(persisted{Service: s, Checks: checks, Version: r.clock.next()})
	}
	// A config registration takes over an ID that the API had persisted.
	if old, ok := r.local[s.ID]; ok && old.Source == SourceAPI {
		return r.store.removeService(s.ID)
	}
	return nil
}

func (r *Registry) registerLocked(tx *txn, s Service, checks []Check, src Source) {
	keep := map[string]bool{}
	for _, c := range checks {
		keep[c.CheckID] = true
	}
	if old, ok := r.local[s.ID]; ok {
		for _, id := range old.Checks {
			if !keep[id] {
				r.dropState(id, r.localChecks[id].Check.Definition.TTL > 0)
				delete(r.localChecks, id)
				tx.localCheckDelete(id)
			}
		}
	}
	ls := localService{Source: src, Service: s}
	tx.localService(s)
	for _, c := range checks {
		c.ServiceID, c.ServiceName = s.ID, s.Name
		r.restoreState(&c)
		ls.Checks = append(ls.Checks, c.CheckID)
		r.localChecks[c.CheckID] = localCheck{Source: src, Check: c, Owned: true}
		tx.localCheck(r.withTags(c, s))
	}
	// Standalone checks on this service keep showing its current tags.
	for _, id := range r.serviceCheckIDs(s.ID) {
		if lc, ok := r.localChecks[id]; ok && !lc.Owned && lc.Check.ServiceID == s.ID {
			lc.Check.ServiceName = s.Name
			r.localChecks[id] = lc
			tx.localCheck(r.withTags(lc.Check, s))
		}
	}
	r.local[s.ID] = ls
}

// serviceCheckIDs returns the IDs of this node's checks on service id, read
// from the writer's tables (ordered by service ID) so that a registration
// costs O(log n) rather than a scan of every local check.
func (r *Registry) serviceCheckIDs(id string) []string {
	node := r.cfg.NodeName
	var ids []string
	r.t.checks.AscendGreaterOrEqual(&CheckEntry{Node: node, Check: Check{ServiceID: id}}, func(c *CheckEntry) bool {
		if c.Node != node || c.ServiceID != id {
			return false
		}
		ids = append(ids, c.CheckID)
		return true
	})
	return ids
}

func (r *Registry) withTags(c Check, s Service) Check {
	c.ServiceTags = s.Tags
	if c.ServiceTags == nil {
		c.ServiceTags = []string{}
	}
	return c
}

// DeregisterService removes a service of this node and its checks.
func (r *Registry) DeregisterService(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls, ok := r.local[id]
	switch {
	case !ok:
		return fmt.Errorf("registry: unknown service ID %q: %w", id, ErrNotFound)
	case ls.Source == SourceAgent:
		return fmt.Errorf("registry: service %q is the agent's own: %w", id, ErrProtected)
	}
	tx := r.begin()
	defer tx.commit()
	dropCheck := func(cid string, lc localCheck) {
		delete(r.localChecks, cid)
		r.dropState(cid, lc.Check.Definition.TTL > 0)
		tx.localCheckDelete(cid)
	}
	// The service's standalone checks' files go first, then the service's:
	// a check file left behind would come back with the service if it were
	// registered again. On a failure, what was removed from disk is removed
	// from the catalog too, and the rest stays in both.
	for _, cid := range r.serviceCheckIDs(id) {
		lc, ok := r.localChecks[cid]
		if !ok || lc.Check.ServiceID != id || lc.Owned || r.store == nil || lc.Source != SourceAPI {
			continue
		}
		if err := r.store.removeCheck(cid); err != nil {
			return err
		}
		dropCheck(cid, lc)
	}
	if r.store != nil && ls.Source == SourceAPI {
		if err := r.store.removeService(id); err != nil {
			return err
		}
	}
	for _, cid := range r.serviceCheckIDs(id) {
		if lc, ok := r.localChecks[cid]; ok && lc.Check.ServiceID == id {
			dropCheck(cid, lc)
		}
	}
	tx.localServiceDelete(id)
	delete(r.local, id)
	return nil
}

// RegisterCheck adds or replaces a standalone check of this node (of the
// node itself, or of one of its services when ServiceID is set).
func (r *Registry) RegisterCheck(c Check, src Source) error {
	if c.CheckID == SerfCheckID {
		return fmt.Errorf("registry: check ID %q is the agent's own: %w", c.CheckID, ErrProtected)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if lc, ok := r.localChecks[c.CheckID]; ok && lc.Owned {
		return &FieldError{Field: "CheckID", Msg: fmt.Sprintf("check %q belongs to service %q's registration", c.CheckID, lc.Check.ServiceID)}
	}
	if c.ServiceID != "" {
		if _, ok := r.local[c.ServiceID]; !ok {
			return &FieldError{Field: "ServiceID", Msg: fmt.Sprintf("unknown service ID %q", c.ServiceID)}
		}
	}
	if r.store != nil && src == SourceAPI {
		if err := r.store.saveCheck(persistedCheck{Check: c}); err != nil {
			return err
		}
	}
	tx := r.begin()
	if err := r.registerCheckLocked(tx, c, src); err != nil {
		return err
	}
	tx.commit()
	return nil
}

func (r *Registry) registerCheckLocked(tx *txn, c Check, src Source) error {
	if c.ServiceID != "" {
		ls, ok := r.local[c.ServiceID]
		if !ok {
			return &FieldError{Field: "ServiceID", Msg: fmt.Sprintf("unknown service ID %q", c.ServiceID)}
		}
		c.ServiceName = ls.Service.Name
		c = r.withTags(c, ls.Service)
	}
	r.restoreState(&c)
	r.localChecks[c.CheckID] = localCheck{Source: src, Check: c}
	tx.localCheck(c)
	return nil
}

// DeregisterCheck removes a standalone check of this node.
func (r *Registry) DeregisterCheck(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	lc, ok := r.localChecks[id]
	switch {
	case !ok:
		return fmt.Errorf("registry: unknown check ID %q: %w", id, ErrNotFound)
	case lc.Owned:
		return fmt.Errorf("registry: check %q belongs to service %q; deregister or re-register the service: %w", id, lc.Check.ServiceID, ErrProtected)
	}
	if r.store != nil && lc.Source == SourceAPI {
		if err := r.store.removeCheck(id); err != nil {
			return err
		}
	}
	tx := r.begin()
	tx.localCheckDelete(id)
	delete(r.localChecks, id)
	r.dropState(id, lc.Check.Definition.TTL > 0)
	tx.commit()
	return nil
}

// UpdateCheck sets the status and output of one of this node's checks. It is
// how the health package reports; an unchanged check publishes nothing.
func (r *Registry) UpdateCheck(id string, status Status, output string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	lc, ok := r.localChecks[id]
	if !ok {
		return fmt.Errorf("registry: unknown check ID %q: %w", id, ErrNotFound)
	}
	if lc.Check.Status == status && lc.Check.Output == output {
		return nil
	}
	lc.Check.Status, lc.Check.Output = status, output
	r.localChecks[id] = lc
	c := lc.Check
	if ls, ok := r.local[c.ServiceID]; ok {
		c = r.withTags(c, ls.Service)
	}
	tx := r.begin()
	tx.localCheck(c)
	tx.commit()
	return nil
}

// LocalChecks returns this node's checks with their definitions, for the
// health package to run.
func (r *Registry) LocalChecks() []Check {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Check, 0, len(r.localChecks))
	for _, lc := range r.localChecks {
		out = append(out, lc.Check)
	}
	slices.SortFunc(out, func(a, b Check) int {
		switch {
		case a.CheckID < b.CheckID:
			return -1
		case a.CheckID > b.CheckID:
			return 1
		}
		return 0
	})
	return out
}

// LocalSource reports where this node's service id came from.
func (r *Registry) LocalSource(id string) (Source, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls, ok := r.local[id]
	return ls.Source, ok
}

// unchanged reports whether registering s with checks from src would change
// nothing; r.mu must be held.
func (r *Registry) unchanged(s Service, checks []Check, src Source) bool {
	old, ok := r.local[s.ID]
	if !ok || old.Source != src || !reflect.DeepEqual(old.Service, s) || len(old.Checks) != len(checks) {
		return false
	}
	for _, c := range checks {
		lc, ok := r.localChecks[c.CheckID]
		c.ServiceID, c.ServiceName = s.ID, s.Name
		if !ok || !lc.Owned || !reflect.DeepEqual(lc.Check, c) {
			return false
		}
	}
	return true
}

// RestorePersistedChecks registers the persisted standalone checks that New
// held back because their service was not registered yet: checks
// (maintenance among them) on services from config files or Docker, which
// are registered after New. The agent calls it after the config services and
// the Docker watcher after its first sync; a check whose service is still
// unknown stays held back (and on disk) for a later call or start.
func (r *Registry) RestorePersistedChecks() {
	r.mu.Lock()
	defer r.mu.Unlock()
	tx := r.begin()
	var still []Check
	for _, c := range r.deferred {
		if _, ok := r.local[c.ServiceID]; !ok {
			still = append(still, c)
			continue
		}
		if err := r.registerCheckLocked(tx, c, SourceAPI); err != nil {
			r.log.Warn("persisted check not restored", "check", c.CheckID, "err", err)
		}
	}
	r.deferred = still
	tx.commit()
}
