package acl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/registry"
)

// ACL replication between datacenters, as Consul's. One datacenter is the
// primary (Config.PrimaryDatacenter; by default every datacenter is its
// own): policies, roles and global tokens are written there only. In a
// secondary datacenter the Raft leader copies the primary's policies and
// roles into its own Raft state, and its global tokens too with
// Config.TokenReplication, using Config.Replication (acl.tokens.replication)
// as its token; tokens made with Local stay in the datacenter that made
// them and are never copied. A write of a global object made in a
// secondary is served by the primary (Endpoints.Routes), and reaches the
// secondary by the next round.
//
// A round is one blocking query against the primary (ReplicatePath,
// through the Primary that registry/api provides over the WAN): it answers
// at once when the primary's objects differ from those the secondary last
// saw (by a hash of them), else when they change or its wait ends. The
// secondary then writes what differs and deletes what the primary no
// longer has, in a few Raft transactions. A round that fails (the primary
// cannot be reached, the token is refused) changes nothing: the secondary
// keeps what it replicated last and tries again after a pause that doubles,
// up to replicationMaxBackoff.

// ReplicatePath is the primary's side of replication: its policies and
// roles, and with ?tokens=true its global tokens (the token asking needs
// acl:write for those, as their secrets go with them), as a blocking query
// on ?hash (the hash of the last answer) with ?wait.
const ReplicatePath = "/v1/internal/acl/replicate"

// RemoteIndexHeader carries, on the answer to a write that the primary
// served, the primary's index once the write was applied: the secondary's
// leader holds the answer until replication has brought that index in
// (awaitReplicated), so that an object written through a secondary can be
// used there as soon as the write answers.
const RemoteIndexHeader = "X-Pier-Primary-Index"

// FromSecondaryHeader marks the requests a secondary makes of its
// primary (rounds, questions about tokens): the primary resolves their
// token from its own state only (ResolveLocal).
const FromSecondaryHeader = "X-Pier-Acl-From-Secondary"

// Primary is how a secondary datacenter reaches the primary; registry/api
// implements it over the WAN (as a request with ?dc=).
type Primary interface {
	// Forward serves r in datacenter dc and writes its answer to w.
	Forward(w http.ResponseWriter, r *http.Request, dc string)
	// Get makes a GET of pathQuery in dc with token; it answers the
	// status and body, or an error when dc could not be reached.
	Get(ctx context.Context, dc, pathQuery, token string) (int, []byte, error)
}

// SetPrimary tells the Authorizer how to reach the primary datacenter.
// Call it once, before the first request.
func (a *Authorizer) SetPrimary(p Primary) { a.primary = p }

// PrimaryDatacenter answers the primary datacenter: Consul's
// primary_datacenter, this agent's own when unset.
func (a *Authorizer) PrimaryDatacenter() string {
	if a.primaryDC != "" {
		return a.primaryDC
	}
	return a.datacenter()
}

// secondary reports whether this agent's datacenter is not the primary.
func (a *Authorizer) secondary() bool {
	return a != nil && a.primaryDC != "" && a.primaryDC != a.datacenter()
}

// localTokens reports whether this datacenter keeps tokens of its own, as
// Consul's LocalTokensEnabled: the primary always; a secondary only when
// it replicates tokens (with a replication token), else every token lives
// in the primary.
func (a *Authorizer) localTokens() bool {
	return !a.secondary() || a.tokenReplication && a.replicationSecret() != ""
}

// replicationSecret answers acl.tokens.replication, or the one set through
// PUT /v1/agent/token/replication, which wins.
func (a *Authorizer) replicationSecret() string {
	if rt := a.agentToks.Load(); rt != nil && rt.set["replication"] {
		return rt.Replication
	}
	return a.cfgSecrets["replication"]
}

// ReplicationStatus is Consul's ACLReplicationStatus, the answer of GET
// /v1/acl/replication.
type ReplicationStatus struct {
	Enabled              bool
	Running              bool
	SourceDatacenter     string
	ReplicationType      string // "policies" (and roles), or "tokens" (and both)
	ReplicatedIndex      uint64 // the primary's index the policies were copied at
	ReplicatedRoleIndex  uint64
	ReplicatedTokenIndex uint64
	LastSuccess          time.Time
	LastError            time.Time
	LastErrorMessage     string
}

// replication is the state of this server's replication.
type replication struct {
	mu     sync.Mutex
	status ReplicationStatus
	// remote is the primary's index of the last round applied; done is
	// closed (and replaced) after every round applied.
	remote uint64
	done   chan struct{}
	// Writes that wait for the primary's index want (awaitReplicated):
	// how many, and a poke (capacity 1) that ends a blocking round.
	waiters int
	want    uint64
	poke    chan struct{}
}

// ReplicationStatus answers this server's replication status (Consul
// serves the leader's); zero in the primary.
func (a *Authorizer) ReplicationStatus() ReplicationStatus {
	if a == nil {
		return ReplicationStatus{}
	}
	a.repl.mu.Lock()
	defer a.repl.mu.Unlock()
	return a.repl.status
}

const (
	// replicationWait is how long the primary holds a round without a
	// change; a WAN cut is seen sooner, as the Primary gives up on a
	// datacenter whose servers the WAN pool sees failed.
	replicationWait = time.Minute
	// replicationMaxBackoff bounds the pause after failed rounds (Consul:
	// 64 s), so that replication resumes soon after a WAN cut heals.
	replicationMaxBackoff = 16 * time.Second
	// Rounds run at most replicationRate a second after a burst of
	// replicationBurst, as Consul's acl replication rate limit (there 1 a
	// second after 5): a round is one blocking query, which takes in
	// every change made since the last, so this only bounds a loop of
	// rounds that answer at once, and a change waits at most 100 ms for it.
	replicationRate  = 10
	replicationBurst = 10
	// replicationBatch bounds the operations of one Raft transaction.
	replicationBatch = 64
	// leaderPoll is how often leadership is looked at.
	leaderPoll = 250 * time.Millisecond
	// awaitReplicatedFor bounds the wait of a write served by the primary
	// for its replication here.
	awaitReplicatedFor = 5 * time.Second
)

// RunReplication replicates the primary's objects while leading answers
// true, until ctx ends; in the primary, or with ACLs off (a nil
// Authorizer), it returns at once. The agent runs it on every server.
func (a *Authorizer) RunReplication(ctx context.Context, leading func() bool) error {
	if !a.secondary() || a.primary == nil {
		return nil
	}
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		for !leading() {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
		}
		a.log.Info("acl: replicating from the primary datacenter", "primary", a.primaryDC, "tokens", a.tokenReplication)
		a.startReplicationStatus()
		lctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // leadership lost: the round stops
			defer wg.Done()
			for {
				select {
				case <-lctx.Done():
					return
				case <-tick.C:
					if !leading() {
						cancel()
						return
					}
				}
			}
		}()
		a.replicateWhileLeading(lctx)
		cancel()
		wg.Wait()
		a.repl.mu.Lock()
		a.repl.status.Running = false
		a.repl.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		a.log.Info("acl: replication stopped: no longer the leader")
	}
}

func (a *Authorizer) startReplicationStatus() {
	a.repl.mu.Lock()
	defer a.repl.mu.Unlock()
	st := &a.repl.status
	st.Enabled, st.Running, st.SourceDatacenter = true, true, a.primaryDC
	st.ReplicationType = "policies"
	if a.tokenReplication {
		st.ReplicationType = "tokens"
	}
	if a.repl.done == nil {
		a.repl.done = make(chan struct{})
		a.repl.poke = make(chan struct{}, 1)
	}
}

// replicateWhileLeading runs rounds until ctx ends.
func (a *Authorizer) replicateWhileLeading(ctx context.Context) {
	var hash string
	var index uint64
	failures := 0
	bucket, last := float64(replicationBurst), time.Now()
	for {
		// The rate limit: replicationRate rounds a second, up to a burst.
		bucket = min(bucket+time.Since(last).Seconds()*replicationRate, replicationBurst)
		last = time.Now()
		if bucket < 1 {
			if !sleepCtx(ctx, time.Duration((1-bucket)/replicationRate*float64(time.Second))) {
				return
			}
			bucket, last = 1, time.Now()
		}
		bucket--
		secret := a.replicationSecret()
		if secret == "" {
			// As Consul: nothing to do until a replication token is set.
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		known := hash
		if a.wanted() {
			known = "" // a write waits for an index: answer at once
		}
		st, poked, err := a.fetchRound(ctx, secret, known, index)
		if ctx.Err() != nil {
			return
		}
		if poked {
			continue // a write waits: the next round asks at once
		}
		if err == nil {
			err = a.applyReplica(st)
		}
		if err != nil {
			hash = "" // the next round compares everything
			a.replicationFailed(err)
			failures++
			if !sleepCtx(ctx, min(time.Second<<min(failures, 10), replicationMaxBackoff)) {
				return
			}
			continue
		}
		failures = 0
		hash, index = st.Hash, st.Index
		a.replicated(st.Index)
	}
}

// fetchRound is one round's query; a write that starts waiting for an
// index newer than the last round's (awaitReplicated) ends a blocking one
// (poked), since the primary answers a blocking query only when its ACL
// objects change, and the index a write names may be past the last round's
// with the objects as they were (an unchanged update, a delete of nothing,
// other KV writes in between).
func (a *Authorizer) fetchRound(ctx context.Context, secret, hash string, index uint64) (st *replicaState, poked bool, err error) {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-a.repl.poke:
			if hash != "" {
				poked = true
				cancel()
			}
		case <-stop:
		}
	}()
	st, err = a.fetchReplica(rctx, secret, hash, index)
	close(stop)
	wg.Wait()
	return st, poked && ctx.Err() == nil, err
}

// wanted reports whether a write waits for an index past the last round's.
func (a *Authorizer) wanted() bool {
	a.repl.mu.Lock()
	defer a.repl.mu.Unlock()
	return a.repl.waiters > 0 && a.repl.want > a.repl.remote
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (a *Authorizer) replicationFailed(err error) {
	a.log.Warn("acl: replication error (will retry while leading)", "err", err)
	a.repl.mu.Lock()
	defer a.repl.mu.Unlock()
	a.repl.status.LastError = time.Now().Round(time.Second).UTC()
	a.repl.status.LastErrorMessage = err.Error()
}

func (a *Authorizer) replicated(index uint64) {
	a.repl.mu.Lock()
	defer a.repl.mu.Unlock()
	st := &a.repl.status
	st.LastSuccess = time.Now().Round(time.Second).UTC()
	st.ReplicatedIndex, st.ReplicatedRoleIndex = index, index
	if a.tokenReplication {
		st.ReplicatedTokenIndex = index
	}
	a.repl.remote = index
	close(a.repl.done)
	a.repl.done = make(chan struct{})
}

// awaitReplicated waits until a round has applied the primary's index
// (or awaitReplicatedFor passes, or ctx ends); at once when this server
// does not replicate what kind is ("token", "policy", "role").
func (a *Authorizer) awaitReplicated(ctx context.Context, index uint64, kind string) {
	if kind == "token" && !a.tokenReplication {
		return
	}
	a.repl.mu.Lock()
	if !a.repl.status.Running || a.repl.remote >= index || a.repl.done == nil {
		a.repl.mu.Unlock()
		return
	}
	a.repl.waiters++
	a.repl.want = max(a.repl.want, index)
	a.repl.mu.Unlock()
	defer func() {
		a.repl.mu.Lock()
		if a.repl.waiters--; a.repl.waiters == 0 {
			a.repl.want = 0
		}
		a.repl.mu.Unlock()
	}()
	select {
	case a.repl.poke <- struct{}{}:
	default:
	}
	timer := time.NewTimer(awaitReplicatedFor)
	defer timer.Stop()
	for {
		a.repl.mu.Lock()
		running, remote, done := a.repl.status.Running, a.repl.remote, a.repl.done
		a.repl.mu.Unlock()
		if !running || remote >= index {
			return
		}
		select {
		case <-done:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// replicaEntry is one object of the primary, as stored there.
type replicaEntry struct {
	Key   string
	Value []byte
}

// replicaState is the answer of ReplicatePath.
type replicaState struct {
	Index   uint64 // the primary's KV index the objects are read at
	Hash    string // of the objects: the next round's ?hash
	Objects []replicaEntry
	Tokens  bool // global tokens are among them
}

func (a *Authorizer) fetchReplica(ctx context.Context, secret, hash string, index uint64) (*replicaState, error) {
	v := url.Values{}
	v.Set("hash", hash)
	v.Set("index", strconv.FormatUint(max(index, 1), 10)) // a blocking query, for the WAN's timeouts
	v.Set("wait", replicationWait.String())
	if a.tokenReplication {
		v.Set("tokens", "true")
	}
	code, body, err := a.primary.Get(ctx, a.primaryDC, ReplicatePath+"?"+v.Encode(), secret)
	if err != nil {
		return nil, fmt.Errorf("failed to retrieve remote ACL objects: %w", err)
	}
	if code != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		if code == http.StatusForbidden && a.tokenReplication && strings.HasPrefix(msg, "Permission denied") {
			return nil, fmt.Errorf("failed to retrieve unredacted tokens - replication token in use does not grant acl:write")
		}
		return nil, fmt.Errorf("failed to retrieve remote ACL objects: %d %s", code, msg)
	}
	var st replicaState
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("failed to decode remote ACL objects: %w", err)
	}
	if a.tokenReplication && !st.Tokens {
		return nil, fmt.Errorf("the primary's answer has no tokens")
	}
	return &st, nil
}

// replicatedKey reports whether key, holding value, is an object that
// replication manages: policies and roles, and global tokens with token
// replication.
func (a *Authorizer) replicatedKey(key string, value []byte) bool {
	switch {
	case strings.HasPrefix(key, aclPolicyPrefix), strings.HasPrefix(key, aclRolePrefix):
		return true
	case strings.HasPrefix(key, aclTokenPrefix):
		return a.tokenReplication && !localToken(value)
	}
	return false
}

func localToken(value []byte) bool {
	var t struct{ Local bool }
	return json.Unmarshal(value, &t) == nil && t.Local
}

// applyReplica makes this datacenter's replicated objects the primary's:
// writes what differs, deletes what the primary no longer has. Local
// tokens are left alone, and a remote token never replaces one.
func (a *Authorizer) applyReplica(st *replicaState) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.waitAgreed()
	want := make(map[string][]byte, len(st.Objects))
	for _, e := range st.Objects {
		// Only what replication manages: an answer cannot write the
		// bootstrap marker, a local token or any other key.
		if !a.replicatedKey(e.Key, e.Value) {
			return fmt.Errorf("the primary's answer holds %q, which is not replicated", e.Key)
		}
		want[e.Key] = e.Value
	}
	var ops []Op
	for _, e := range a.reg.Snapshot().KVList(aclKVPrefix) {
		if !a.replicatedKey(e.Key, e.Value) {
			delete(want, e.Key) // a local token of the same accessor stays
			continue
		}
		v, ok := want[e.Key]
		switch {
		case !ok:
			ops = append(ops, Op{Verb: OpDelete, Key: e.Key})
		case bytes.Equal(v, e.Value):
			delete(want, e.Key)
		}
	}
	// Policies before the roles and tokens that link them.
	for _, prefix := range []string{aclPolicyPrefix, aclRolePrefix, aclTokenPrefix} {
		for _, e := range st.Objects {
			if v, ok := want[e.Key]; ok && strings.HasPrefix(e.Key, prefix) {
				ops = append(ops, Op{Verb: OpSet, Key: e.Key, Value: v})
			}
		}
	}
	// The marker of token replication comes last: once it is there, this
	// datacenter's agents take a token they do not know for one that
	// does not exist (remote.go).
	_, marked := a.reg.Snapshot().KV(aclReplicatedKey)
	switch {
	case a.tokenReplication && !marked:
		ops = append(ops, Op{Verb: OpSet, Key: aclReplicatedKey, Value: []byte(`{"From":` + strconv.Quote(a.primaryDC) + `}`)})
	case !a.tokenReplication && marked:
		ops = append(ops, Op{Verb: OpDelete, Key: aclReplicatedKey})
	}
	for len(ops) > 0 {
		n := min(len(ops), replicationBatch)
		if _, err := a.w.Txn(ops[:n]); err != nil {
			return fmt.Errorf("failed to apply replicated ACL objects: %w", err)
		}
		ops = ops[n:]
	}
	a.syncLocked()
	return nil
}

// agreedSnapshot answers the newest snapshot and the Raft KV index of the
// servers' state it shows (the index a write's answer names).
func (a *Authorizer) agreedSnapshot() (*registry.Snapshot, uint64) {
	for {
		before, _ := a.reg.Agreed()
		snap := a.reg.Snapshot()
		if after, _ := a.reg.Agreed(); after.KVIndex == before.KVIndex {
			return snap, before.KVIndex
		}
	}
}

// replicaOf answers the objects of snap, at the primary's index, that a
// secondary replicates.
func replicaOf(snap *registry.Snapshot, index uint64, tokens bool) *replicaState {
	st := &replicaState{Index: index, Tokens: tokens, Objects: []replicaEntry{}}
	h := sha256.New()
	for _, e := range snap.KVList(aclKVPrefix) {
		switch {
		case strings.HasPrefix(e.Key, aclPolicyPrefix), strings.HasPrefix(e.Key, aclRolePrefix):
		case tokens && strings.HasPrefix(e.Key, aclTokenPrefix) && !localToken(e.Value):
		default:
			continue
		}
		st.Objects = append(st.Objects, replicaEntry{Key: e.Key, Value: e.Value})
		h.Write([]byte(e.Key))
		h.Write([]byte{0})
		h.Write(e.Value)
		h.Write([]byte{0})
	}
	st.Hash = hex.EncodeToString(h.Sum(nil))
	return st
}

// aclReplicateState serves ReplicatePath (in the primary): policy and
// roles need acl:read (the route's permission), tokens acl:write.
func (s *Endpoints) aclReplicateState(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	q := r.URL.Query()
	tokens := q.Get("tokens") == "true"
	if p := PolicyOf(r); tokens && (p == nil || !p.ACLWrite()) {
		Denied(w)
		return
	}
	wait := replicationWait
	if d, err := time.ParseDuration(q.Get("wait")); err == nil && d > 0 {
		wait = min(d, 10*time.Minute)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	a := s.acl
	for {
		snap, index := a.agreedSnapshot()
		if a.agreedOnly && !snap.Agreed() {
			// Answering nothing would delete everything there.
			httpError(w, http.StatusInternalServerError, "The servers' ACL state has not reached this server yet")
			return
		}
		st := replicaOf(snap, index, tokens)
		if st.Hash != q.Get("hash") {
			writeJSON(w, r, st)
			return
		}
		select {
		case <-snap.KVChanged():
		case <-timer.C:
			writeJSON(w, r, st)
			return
		case <-r.Context().Done():
			return
		}
	}
}
