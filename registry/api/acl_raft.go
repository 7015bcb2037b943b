package api

import (
	"errors"
	"net/http"

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
		if s.acl != nil {
			if _, ok := s.raftWrite(w, r); !ok {
				return
			}
		}
		h(w, r)
	}, perm)
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
