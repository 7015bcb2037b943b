package raft

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/registry"
)

// The agreed state reaches every agent's registry (registry.SetAgreed):
//
//   - on a server, RunMirror hands each newly applied State to the
//     registry; the KV store is passed by reference (a State is immutable
//     and implements registry.AgreedKV), so an apply costs the registry one
//     new snapshot whatever the store's size;
//   - on a client, FollowMirror long-polls a server's MirrorHandler for the
//     whole agreed state (KV and external nodes; sessions stay on the
//     servers) each time it changes, failing over from one server to the
//     next. A whole state per change is simple and enough for stores of
//     thousands of keys (BenchmarkMirrorAnswer measures it); a stream of
//     changes would be the next step.

// MirrorPath is where servers serve MirrorHandler on their internal HTTP.
const MirrorPath = "/pier/v1/agreed"

// Blocking bounds of the mirror's long poll, as Consul's blocking queries.
const (
	// The default ?wait. An unchanged state answers 204 with no body, so
	// a wait this short costs little, and a server gone silent (no reset,
	// no answer) is left after at most this and a margin.
	mirrorWait    = time.Minute
	mirrorMaxWait = 10 * time.Minute // the longest ?wait
	// A server that has not heard from a leader for this long answers 503,
	// so that a client follows a server that is not cut off.
	mirrorMaxStale = 10 * time.Second
)

// MirrorIndex is the last index that changed what the mirror carries (the
// KV store or the external nodes): session changes leave it alone. Never
// 0, as Consul's indexes, so that a client's ?index is 0 only when it has
// nothing yet (the log's first entry is the configuration, never a change
// of either).
func (s *State) MirrorIndex() uint64 { return max(s.kvIndex, s.catalogIndex, 1) }

// AscendKV calls fn for each key from from on, in order, until fn returns
// false; with KV it makes a State a registry.AgreedKV.
func (s *State) AscendKV(from string, fn func(*KVEntry) bool) {
	s.kv.AscendGreaterOrEqual(&KVEntry{Key: from}, fn)
}

var _ registry.AgreedKV = (*State)(nil)

// RunMirror gives reg each applied change of node's state until ctx ends;
// a burst of applies is merged once (it reads the newest State when it
// wakes). Servers run it; clients run FollowMirror.
//
// A restarted server shows nothing of its state until it has caught up
// with the log it had (CaughtUp): the registry keeps what it showed before,
// rather than routes from KV and ACL tokens vanishing for an election.
func RunMirror(ctx context.Context, node *Node, reg *registry.Registry) error {
	for !node.CaughtUp() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	var nodes nodesCache
	for {
		s := node.State()
		reg.SetAgreed(registry.Agreed{
			Index: s.MirrorIndex(), KVIndex: s.kvIndex, KV: s,
			CatalogIndex: s.catalogIndex, Nodes: nodes.of(s),
		})
		select {
		case <-ctx.Done():
			return nil
		case <-s.Changed():
		}
	}
}

// nodesCache keeps the list of external nodes until they change, so a KV
// write does not walk them.
type nodesCache struct {
	index uint64
	nodes []*registry.ExternalNode
	ok    bool
}

func (c *nodesCache) of(s *State) []*registry.ExternalNode {
	if !c.ok || c.index != s.catalogIndex {
		c.index, c.nodes, c.ok = s.catalogIndex, s.ExternalNodes(), true
	}
	return c.nodes
}

// mirrorBody is the wire form of the agreed state.
type mirrorBody struct {
	Index        uint64 // MirrorIndex
	KVIndex      uint64
	CatalogIndex uint64
	KV           []*KVEntry
	Nodes        []*registry.ExternalNode
}

// MirrorHandler serves GET MirrorPath?index=N&wait=D: the agreed state
// (200, JSON) once its MirrorIndex is past N, at once when N is 0 or
// missing; 204 with no body when the wait (default 1m, at most 10m) runs
// out first. X-Pier-Index is the MirrorIndex of the server's state. A
// client past the leader's index gets the state at once: the servers'
// history was reset. Clients waiting on one change share one encoding of
// it. A server that has not heard from a leader for 10s answers 503. It
// answers every key, so it must be served where only agents reach it.
func MirrorHandler(node *Node) http.Handler {
	return &mirrorHandler{node: node}
}

type mirrorHandler struct {
	node *Node

	mu    sync.Mutex
	index uint64 // the MirrorIndex body encodes
	body  []byte
}

func (h *mirrorHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	var idx uint64
	if v := q.Get("index"); v != "" {
		var err error
		if idx, err = strconv.ParseUint(v, 10, 64); err != nil {
			http.Error(w, fmt.Sprintf("index: %q is not a number", v), http.StatusBadRequest)
			return
		}
	}
	wait := mirrorWait
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			http.Error(w, fmt.Sprintf("wait: %q is not a duration", v), http.StatusBadRequest)
			return
		}
		wait = min(d, mirrorMaxWait)
	}
	if err := h.fresh(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	s := h.node.State()
	if idx > s.MirrorIndex() && h.node.IsLeader() {
		// The client is ahead of the leader, which has applied everything
		// committed: its state is from a history that is gone (servers
		// wiped and bootstrapped again, or -dev restarted). It gets this
		// one at once.
		idx = 0
	}
	if idx > 0 && s.MirrorIndex() <= idx {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		tick := time.NewTicker(mirrorMaxStale / 2)
		defer tick.Stop()
	waiting:
		for s.MirrorIndex() <= idx {
			select {
			case <-s.Changed():
				s = h.node.State()
			case <-timer.C:
				break waiting
			case <-tick.C:
				if err := h.fresh(); err != nil {
					http.Error(w, err.Error(), http.StatusServiceUnavailable)
					return
				}
			case <-r.Context().Done():
				return
			}
		}
	}
	w.Header().Set("X-Pier-Index", strconv.FormatUint(s.MirrorIndex(), 10))
	if idx > 0 && s.MirrorIndex() <= idx {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	body, err := h.encode(s)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

// fresh refuses to answer from a server cut off from the leader.
func (h *mirrorHandler) fresh() error {
	if !h.node.CaughtUp() {
		return errors.New("raft: this server has not yet applied the log it restarted with; ask another server")
	}
	if lc := h.node.LastContact(); time.Since(lc) > mirrorMaxStale {
		return fmt.Errorf("raft: no contact with a leader for %v; ask another server", time.Since(lc).Round(time.Second))
	}
	return nil
}

// encode answers s's body, encoded once per MirrorIndex.
func (h *mirrorHandler) encode(s *State) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.body != nil && h.index == s.MirrorIndex() {
		return h.body, nil
	}
	b, err := json.Marshal(mirrorBody{
		Index: s.MirrorIndex(), KVIndex: s.kvIndex, CatalogIndex: s.catalogIndex,
		KV: s.KVList(""), Nodes: s.ExternalNodes(),
	})
	if err != nil {
		return nil, fmt.Errorf("raft: encoding the agreed state: %w", err)
	}
	h.index, h.body = s.MirrorIndex(), b
	return b, nil
}

// decodeMirror reads an answer of MirrorHandler into what SetAgreed takes.
func decodeMirror(r io.Reader) (registry.Agreed, error) {
	var b mirrorBody
	if err := json.NewDecoder(r).Decode(&b); err != nil {
		return registry.Agreed{}, fmt.Errorf("decoding the agreed state: %w", err)
	}
	for _, e := range b.KV {
		if e == nil {
			return registry.Agreed{}, errors.New("decoding the agreed state: a null key")
		}
	}
	for _, n := range b.Nodes {
		if n == nil || n.Node.Name == "" {
			return registry.Agreed{}, errors.New("decoding the agreed state: a node without a name")
		}
	}
	return registry.Agreed{Index: b.Index, KVIndex: b.KVIndex, KV: registry.KVTree(b.KV), CatalogIndex: b.CatalogIndex, Nodes: b.Nodes}, nil
}

// Failover pacing of FollowMirror: after a failure it asks the next server
// at once, then waits longer after each further failure, up to the bound.
const (
	followBackoff    = 100 * time.Millisecond
	followMaxBackoff = 5 * time.Second
)

// FollowMirror keeps reg's agreed state a copy of the servers' until ctx
// ends: it long-polls one server (an address "host:port" or a URL of its
// internal HTTP, from servers(), asked again on each round) and merges each
// answer with reg.SetAgreed; when that server fails or cannot answer, it
// moves to the next one. While every server fails, reg keeps the last
// state it had. client's Timeout must be zero or longer than the long poll
// (a minute).
func FollowMirror(ctx context.Context, servers func() []string, reg *registry.Registry, client *http.Client, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var index uint64 // 0: nothing yet, answered at once
	if a, ok := reg.Agreed(); ok {
		index = a.Index
	}
	next, failures := 0, 0
	for ctx.Err() == nil {
		list := servers()
		if len(list) == 0 {
			failures++
			sleep(ctx, backoff(failures))
			continue
		}
		addr := list[next%len(list)]
		a, changed, err := pollMirror(ctx, client, addr, index)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			failures++
			next++
			log.Warn("raft: mirror: a server did not answer; asking the next", "server", addr, "err", err, "failures", failures)
			if failures > 1 {
				sleep(ctx, backoff(failures-1))
			}
			continue
		}
		if failures > 0 {
			log.Info("raft: mirror: following a server", "server", addr, "index", a.Index)
		}
		failures = 0
		// Only a newer state, or the leader's after a reset of the
		// servers' history (MirrorHandler), is answered with one.
		if changed {
			if a.Index < index {
				log.Warn("raft: mirror: the servers' index went back; taking their state", "server", addr, "index", a.Index, "had", index)
			}
			reg.SetAgreed(a)
			index = a.Index
		}
	}
	return nil
}

func backoff(failures int) time.Duration {
	d := followBackoff
	for i := 1; i < failures && d < followMaxBackoff; i++ {
		d *= 2
	}
	return min(d, followMaxBackoff)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// pollMirror asks one server for the agreed state past index; false when
// the wait ran out with nothing newer.
func pollMirror(ctx context.Context, client *http.Client, addr string, index uint64) (registry.Agreed, bool, error) {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u, err := url.Parse(strings.TrimRight(base, "/") + MirrorPath)
	if err != nil {
		return registry.Agreed{}, false, fmt.Errorf("server address %q: %w", addr, err)
	}
	u.RawQuery = url.Values{"index": {strconv.FormatUint(index, 10)}, "wait": {mirrorWait.String()}}.Encode()
	// The server answers within the wait; past it (and a margin), it is
	// taken for gone, as a silent partition would leave it.
	ctx, cancel := context.WithTimeout(ctx, mirrorWait+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return registry.Agreed{}, false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return registry.Agreed{}, false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		a, err := decodeMirror(resp.Body)
		return a, err == nil, err
	case http.StatusNoContent:
		return registry.Agreed{}, false, nil
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return registry.Agreed{}, false, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
}
