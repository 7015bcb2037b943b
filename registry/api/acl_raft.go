package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// The ACL objects on Raft (Config.Consensus): the writes of registry/acl's
// endpoints run on the leader, as the KV writes do (a follower or a client
// forwards the HTTP request as it came, token and body included; the
// server port serves it), and apply through the leader's node. Reads stay
// on every agent, from its snapshot, where the servers' mirror puts the
// ACL store (registry.AgreedReservedPrefix).

// aclAgreedRoute registers a write of the cluster's ACL objects.
func (s *Server) aclAgreedRoute(pattern string, h http.HandlerFunc, perm acl.Perm) {
	if s.cfg.Consensus == nil {
		s.route(pattern, h, perm)
		return
	}
	s.raftRoute(pattern, func(w http.ResponseWriter, r *http.Request) {
		// With ACLs off here the handler answers 401 itself: nothing to
		// forward.
		if s.acl == nil {
			h(w, r)
			return
		}
		n, ok := s.raftWrite(w, r)
		if !ok {
			return
		}
		if r.Header.Get(hopHeader) != "" {
			w = &agreedIndexWriter{ResponseWriter: w, n: n}
		}
		h(w, r)
	}, perm)
}

// agreedIndexHeader is on the answer to a forwarded write of the ACL
// store: the Raft KV index once the write was applied. Each agent the
// answer passes back through waits (awaitAgreed) until its own registry
// shows that index before it passes the answer on, so that whoever made a
// token can use it at once on the agent they asked, as with Consul (whose
// client agents ask the servers about a token they do not know).
const agreedIndexHeader = "X-Pier-Agreed-Index"

// agreedWait bounds that wait: a mirror that lags longer is broken, and the
// answer goes on all the same.
const agreedWait = 5 * time.Second

// agreedIndexWriter sets agreedIndexHeader as the handler starts its
// answer, which it does after its write.
type agreedIndexWriter struct {
	http.ResponseWriter
	n     *raft.Node
	wrote bool
}

func (w *agreedIndexWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		w.Header().Set(agreedIndexHeader, strconv.FormatUint(w.n.State().KVIndex(), 10))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *agreedIndexWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// awaitAgreed is the forwarding proxy's ModifyResponse: it holds an answer
// that carries agreedIndexHeader until this agent's registry shows that
// index (at most agreedWait).
func (s *Server) awaitAgreed(resp *http.Response) error {
	idx, err := strconv.ParseUint(resp.Header.Get(agreedIndexHeader), 10, 64)
	if err != nil {
		return nil // none, or not ours
	}
	timer := time.NewTimer(agreedWait)
	defer timer.Stop()
	for {
		snap := s.reg.Snapshot() // before the check: a later SetAgreed closes its Changed
		if ag, ok := s.reg.Agreed(); ok && max(ag.KVIndex, 1) >= idx {
			return nil
		}
		select {
		case <-snap.Changed():
		case <-resp.Request.Context().Done():
			return nil
		case <-timer.C:
			s.log.Warn("api: the servers' state did not reach this agent in time after an ACL write (is the mirror running?)", "index", idx)
			return nil
		}
	}
}

// raftACLWriter is acl.Writer through the leader's Raft node; the
// handlers that call it run on the leader (aclAgreedRoute).
type raftACLWriter struct{ c Consensus }

var errNotServer = errors.New("an ACL write reached a client agent instead of the leader")

func (w raftACLWriter) node() (*raft.Node, error) {
	if n := w.c.Node(); n != nil {
		return n, nil
	}
	return nil, errNotServer
}

func (w raftACLWriter) Index() uint64 {
	if n := w.c.Node(); n != nil {
		return n.State().KVIndex()
	}
	return 0
}

func (w raftACLWriter) Put(key string, value []byte) error {
	_, err := w.apply([]acl.Op{{Verb: acl.OpSet, Key: key, Value: value}})
	return err
}

func (w raftACLWriter) Delete(key string) error {
	_, err := w.apply([]acl.Op{{Verb: acl.OpDelete, Key: key}})
	return err
}

func (w raftACLWriter) Txn(ops []acl.Op) (bool, error) { return w.apply(ops) }

// apply commits ops as one Raft txn; false when a check failed.
func (w raftACLWriter) apply(ops []acl.Op) (bool, error) {
	n, err := w.node()
	if err != nil {
		return false, err
	}
	kops := make([]raft.KVOp, len(ops))
	for i, op := range ops {
		kops[i] = raft.KVOp{Verb: op.Verb, Key: op.Key, Value: op.Value, Index: op.Index}
	}
	res, err := n.Txn(kops)
	switch {
	case errors.Is(err, raft.ErrNoLeader):
		return false, errors.New("No cluster leader")
	case errors.Is(err, raft.ErrNotLeader):
		return false, errors.New("Leadership moved while the request was served; nothing was applied, retry")
	case err != nil:
		return false, err
	case res.Err != nil:
		return false, res.Err
	}
	return len(res.Errors) == 0, nil
}
