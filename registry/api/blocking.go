package api

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-bexpr"

	"github.com/pier-dev/pier/registry"
)

// query holds the query parameters that catalog and health reads share.
type query struct {
	minIndex uint64
	wait     time.Duration
	tags     []string
	passing  bool
	nodeMeta map[string]string
	filter   *bexpr.Evaluator // ?filter=, Consul's boolean expressions; nil without one
}

// parseQuery reads Consul's common query parameters; false means an error
// answer was sent.
func (s *Server) parseQuery(w http.ResponseWriter, r *http.Request) (query, bool) {
	var q query
	v := r.URL.Query()
	if !s.localDC(w, r) {
		return q, false
	}
	var ok bool
	if q.filter, ok = parseFilter(w, r); !ok {
		return q, false
	}
	if s := v.Get("index"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			httpError(w, http.StatusBadRequest, "index: %q is not a non-negative integer", s)
			return q, false
		}
		q.minIndex = n
	}
	q.wait = s.cfg.DefaultWait
	if ws := v.Get("wait"); ws != "" {
		d, err := time.ParseDuration(ws)
		if err != nil || d < 0 {
			httpError(w, http.StatusBadRequest, "wait: %q is not a duration such as 10s or 120000ms", ws)
			return q, false
		}
		q.wait = min(d, s.cfg.MaxWait)
	}
	q.tags = v["tag"]
	if p, ok := v["passing"]; ok {
		// Consul treats a bare ?passing as true.
		switch strings.ToLower(p[0]) {
		case "", "1", "true":
			q.passing = true
		case "0", "false":
		default:
			httpError(w, http.StatusBadRequest, "passing: %q is not a boolean", p[0])
			return q, false
		}
	}
	for _, kv := range v["node-meta"] {
		k, val, ok := strings.Cut(kv, ":")
		if !ok || k == "" {
			httpError(w, http.StatusBadRequest, "node-meta: %q is not key:value", kv)
			return q, false
		}
		if q.nodeMeta == nil {
			q.nodeMeta = map[string]string{}
		}
		q.nodeMeta[k] = val
	}
	return q, true
}

// localDC answers Consul's error for a ?dc= other than this agent's, which
// it cannot reach; false means that answer was sent.
func (s *Server) localDC(w http.ResponseWriter, r *http.Request) bool {
	if dc := r.URL.Query().Get("dc"); dc != "" && dc != s.reg.Config().Datacenter {
		httpError(w, http.StatusInternalServerError, "No path to datacenter %q", dc)
		return false
	}
	return true
}

// block implements Consul's blocking query: with ?index=N it waits until the
// answer's index moves past N, the wait (plus up to 1/16 jitter, as Consul
// adds, so that many clients do not return in step) runs out, or the client
// goes away. An index that went backwards (the agent restarted) answers at
// once, so that the client resets as Consul's clients do. It returns the
// snapshot to answer from and sets X-Consul-Index, which is never 0.
func (s *Server) block(w http.ResponseWriter, r *http.Request, q query, v view) *registry.Snapshot {
	index := v.index
	snap := s.reg.Snapshot()
	if q.minIndex > 0 {
		wait := q.wait
		if wait > 0 {
			wait += rand.N(wait/16 + 1)
		}
		timer := time.NewTimer(wait)
		defer timer.Stop()
		s.met.blockStart()
		defer s.met.blockEnd()
	loop:
		for idx := index(snap); idx == q.minIndex; idx = index(snap) {
			select {
			case <-v.changed(snap):
				snap = s.reg.Snapshot()
			case <-timer.C:
				break loop
			case <-r.Context().Done():
				break loop
			}
		}
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(max(index(snap), 1), 10))
	return snap
}

// A view is what a blocking endpoint's answer is made of, as Consul indexes
// an answer by the tables it reads: its index, and the channel that is
// closed when a newer snapshot may have moved it. A KV write moves no
// catalog or health answer, and a catalog change no KV answer.
type view struct {
	index   func(*registry.Snapshot) uint64
	changed func(*registry.Snapshot) <-chan struct{}
}

func catalogChanged(s *registry.Snapshot) <-chan struct{} { return s.CatalogChanged() }

// catalogView is an answer made of the catalog tables picked by index.
func catalogView(index func(*registry.Snapshot) uint64) view {
	return view{index: index, changed: catalogChanged}
}

// The indexes of the catalog's answers: a table's own, or the greater of
// two for an answer made of both (a node with its services, checks
// filtered by their nodes' meta).
func nodesIndex(s *registry.Snapshot) uint64    { return s.NodesIndex() }
func servicesIndex(s *registry.Snapshot) uint64 { return s.ServicesIndex() }
func checksIndex(s *registry.Snapshot) uint64   { return s.ChecksIndex() }
func nodeServicesIndex(s *registry.Snapshot) uint64 {
	return max(s.NodesIndex(), s.ServicesIndex())
}
func nodeChecksIndex(s *registry.Snapshot) uint64 { return max(s.NodesIndex(), s.ChecksIndex()) }

func kvView() view {
	return view{index: (*registry.Snapshot).KVIndex, changed: (*registry.Snapshot).KVChanged}
}

// serviceView is the answer about one service: its instances, their nodes
// and checks, which move the service's own index.
func serviceView(name string) view {
	return catalogView(func(s *registry.Snapshot) uint64 { return s.ServiceIndex(name) })
}

// Limits on ?filter=: Consul's expressions are short, and one arrives
// from the network.
const (
	maxFilterLen   = 4096
	maxFilterExprs = 200000
)

// parseFilter compiles ?filter= (go-bexpr, the library Consul uses); nil
// without one, and false when an error answer was sent.
func parseFilter(w http.ResponseWriter, r *http.Request) (*bexpr.Evaluator, bool) {
	expr := r.URL.Query().Get("filter")
	if expr == "" {
		return nil, true
	}
	if len(expr) > maxFilterLen {
		httpError(w, http.StatusBadRequest, "filter: longer than %d bytes", maxFilterLen)
		return nil, false
	}
	f, err := bexpr.CreateEvaluator(expr, bexpr.WithMaxExpressions(maxFilterExprs))
	if err != nil {
		httpError(w, http.StatusBadRequest, "filter: %q: %v", expr, err)
		return nil, false
	}
	return f, true
}

// filtered keeps the elements of a list of Consul's shapes that match f,
// as Consul applies ?filter= to what it would answer; false means an error
// answer was sent (a selector that names no field).
func filtered[E any](w http.ResponseWriter, f *bexpr.Evaluator, in []E) ([]E, bool) {
	if f == nil {
		return in, true
	}
	out := in[:0]
	for _, e := range in {
		ok, err := f.Evaluate(e)
		if err != nil {
			httpError(w, http.StatusBadRequest, "filter: %v", err)
			return nil, false
		}
		if ok {
			out = append(out, e)
		}
	}
	return out, true
}

// filteredMap is filtered for the answers that are maps by ID.
func filteredMap[E any](w http.ResponseWriter, f *bexpr.Evaluator, m map[string]E) bool {
	if f == nil {
		return true
	}
	for k, e := range m {
		ok, err := f.Evaluate(e)
		if err != nil {
			httpError(w, http.StatusBadRequest, "filter: %v", err)
			return false
		}
		if !ok {
			delete(m, k)
		}
	}
	return true
}
