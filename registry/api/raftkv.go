package api

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// The KV store served from the Raft state (Config.Consensus): Consul's
// semantics, locks and CAS agreed by a quorum, instead of gossip's last
// writer wins.

func (s *Server) raftRoutes() {
	s.raftRoute("GET /v1/kv/{key...}", s.raftKVGet, keyAccess)
	s.raftWrites("/v1/kv/{key...}", s.raftKVPut, keyAccess)
	s.raftRoute("DELETE /v1/kv/{key...}", s.raftKVDelete, keyAccess)
	s.sessionRoutes()         // session.go
	s.txnRoutes()             // txn.go
	s.operatorRoutes()        // operator.go: operator raft, snapshots
	s.catalogRegisterRoutes() // catalog_register.go: external nodes
}

// blockRaft is block (blocking.go) over the Raft state: it waits while
// index(st) is ?index, and sets X-Consul-Index.
func (s *Server) blockRaft(w http.ResponseWriter, r *http.Request, q query, n *raft.Node, st *raft.State, index func(*raft.State) uint64) *raft.State {
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
		for index(st) == q.minIndex {
			select {
			case <-st.Changed():
				st = n.State()
			case <-timer.C:
				break loop
			case <-r.Context().Done():
				break loop
			}
		}
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(max(index(st), 1), 10))
	return st
}

func (s *Server) raftKVGet(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	v := r.URL.Query()
	if key == "" && !v.Has("recurse") && !v.Has("keys") {
		httpError(w, http.StatusBadRequest, "Missing key name")
		return
	}
	st, n, ok := s.raftRead(w, r)
	if !ok {
		return
	}
	st = s.blockRaft(w, r, q, n, st, (*raft.State).KVIndex)
	p := acl.PolicyOf(r)
	mayRead := func(k string) bool { return !hiddenKey(r, k) && (p == nil || acmeRequest(r) || p.KeyRead(k)) }
	switch {
	case v.Has("keys"):
		sep := v.Get("separator")
		var keys []string
		for _, e := range st.KVList(key) {
			if !mayRead(e.Key) {
				continue
			}
			k := e.Key
			if sep != "" {
				if i := strings.Index(k[len(key):], sep); i >= 0 {
					k = k[:len(key)+i+len(sep)]
				}
			}
			if len(keys) == 0 || keys[len(keys)-1] != k {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		writeJSON(w, r, keys)
	case v.Has("recurse"):
		var out []kvPair
		for _, e := range st.KVList(key) {
			if mayRead(e.Key) {
				out = append(out, toKVPair(e))
			}
		}
		if len(out) == 0 {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		writeJSON(w, r, out)
	default:
		e, found := st.KV(key)
		if !found || hiddenKey(r, key) {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if v.Has("raw") {
			h := w.Header()
			h.Set("Content-Type", "text/plain; charset=utf-8")
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Content-Security-Policy", "sandbox")
			w.Write(e.Value)
			return
		}
		writeJSON(w, r, []kvPair{toKVPair(e)})
	}
}

// conflicting answers 400 when more than one of flags is given, as Consul.
func conflicting(w http.ResponseWriter, r *http.Request, flags ...string) bool {
	v := r.URL.Query()
	n := 0
	for _, f := range flags {
		if v.Has(f) {
			n++
		}
	}
	if n > 1 {
		httpError(w, http.StatusBadRequest, "Conflicting flags: %s (use only one of %s)", v.Encode(), strings.Join(flags, ", "))
		return true
	}
	return false
}

func (s *Server) raftKVPut(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if key == "" {
		httpError(w, http.StatusBadRequest, "Missing key name")
		return
	}
	if hiddenKey(r, key) {
		refuseReserved(w)
		return
	}
	if err := registry.ValidKey(key); err != nil {
		writeError(w, "Invalid KV write", err)
		return
	}
	if !s.localDC(w, r) || conflicting(w, r, "cas", "acquire", "release") {
		return
	}
	flags, ok := uintParam(w, r, "flags")
	if !ok {
		return
	}
	cas, ok := uintParam(w, r, "cas")
	if !ok {
		return
	}
	op := raft.KVOp{Verb: raft.KVSet, Key: key}
	if flags != nil {
		op.Flags = *flags
	}
	v := r.URL.Query()
	switch {
	case cas != nil:
		op.Verb, op.Index = raft.KVCAS, *cas
	case v.Has("acquire"):
		op.Verb, op.Session = raft.KVLock, v.Get("acquire")
	case v.Has("release"):
		op.Verb, op.Session = raft.KVUnlock, v.Get("release")
	}
	if (op.Verb == raft.KVLock || op.Verb == raft.KVUnlock) && op.Session == "" {
		httpError(w, http.StatusBadRequest, "%s: missing session ID", map[string]string{raft.KVLock: "acquire", raft.KVUnlock: "release"}[op.Verb])
		return
	}
	// Where the write goes is decided before the body is read: a forward
	// sends the body on untouched.
	n, ok := s.raftWrite(w, r)
	if !ok {
		return
	}
	value, ok := readKVValue(w, r)
	if !ok {
		return
	}
	op.Value = value
	if err := s.kvFull(n.State(), []raft.KVOp{op}); err != nil {
		writeError(w, "Invalid KV write", err)
		return
	}
	if op.Verb == raft.KVLock && n.LockDelayed(key) {
		// Consul's lock delay: the lock was freed by an invalidated
		// session moments ago; the acquire fails, it is no error.
		writeJSON(w, r, false)
		return
	}
	res, err := n.KV(op)
	if !applied(w, res, err) {
		return
	}
	writeJSON(w, r, res.OK)
}

func (s *Server) raftKVDelete(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if !s.localDC(w, r) || conflicting(w, r, "recurse", "cas") {
		return
	}
	cas, ok := uintParam(w, r, "cas")
	if !ok {
		return
	}
	op := raft.KVOp{Verb: raft.KVDelete, Key: key}
	switch {
	case r.URL.Query().Has("recurse"):
		op.Verb = raft.KVDeleteTree
	case key == "":
		httpError(w, http.StatusBadRequest, "Missing key name")
		return
	case cas != nil:
		op.Verb, op.Index = raft.KVDeleteCAS, *cas
	}
	if hiddenKey(r, key) {
		refuseReserved(w)
		return
	}
	n, ok := s.raftWrite(w, r)
	if !ok {
		return
	}
	res, err := n.KV(op)
	if !applied(w, res, err) {
		return
	}
	writeJSON(w, r, op.Verb != raft.KVDeleteCAS || res.OK)
}

// kvFull refuses writes that would take the store past the registry's
// KVMaxBytes, the limit the gossip KV has (checked by the leader against
// its state; a key written twice in one txn counts twice).
func (s *Server) kvFull(st *raft.State, ops []raft.KVOp) error {
	limit := s.reg.Config().KVMaxBytes
	if limit <= 0 {
		return nil
	}
	size := st.KVBytes()
	for _, op := range ops {
		switch op.Verb {
		case raft.KVSet, raft.KVCAS, raft.KVLock, raft.KVUnlock:
			size += int64(len(op.Key) + len(op.Value))
			if old, ok := st.KV(op.Key); ok {
				size -= int64(len(old.Key) + len(old.Value))
			}
		}
	}
	if size > limit {
		return fmt.Errorf("%w: %d bytes with this write, limit %d", registry.ErrKVFull, size, limit)
	}
	return nil
}

// raftStatusLeader and raftStatusPeers answer /v1/status from Raft: the
// leader's server-port address ("" when none is known) and the voters'.
func (s *Server) raftStatusLeader(w http.ResponseWriter, r *http.Request) {
	n := s.cfg.Consensus.Node()
	if n == nil {
		s.forwardToServer(w, r)
		return
	}
	s.raftMeta(w, r, n)
	addr, _ := n.Leader()
	writeJSON(w, r, addr)
}

func (s *Server) raftStatusPeers(w http.ResponseWriter, r *http.Request) {
	n := s.cfg.Consensus.Node()
	if n == nil {
		s.forwardToServer(w, r)
		return
	}
	servers, err := n.Configuration()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	peers := []string{}
	for _, sv := range servers {
		if sv.Voter {
			peers = append(peers, sv.Address)
		}
	}
	s.raftMeta(w, r, n)
	writeJSON(w, r, peers)
}
