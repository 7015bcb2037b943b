package api

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"

	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// The servers' Raft group as Consul's operator endpoints show it, and
// operator snapshots.

func (s *Server) operatorRoutes() {
	s.raftRoute("GET /v1/operator/raft/configuration", s.raftConfiguration, operatorRead)
	s.raftRoute("DELETE /v1/operator/raft/peer", s.raftRemovePeer, operatorWrite)
	s.raftRoute("POST /v1/operator/raft/transfer-leader", s.raftTransferLeader, operatorWrite)
	s.raftRoute("GET /v1/snapshot", s.snapshotSave, aclWrite)
	s.raftRoute("PUT /v1/snapshot", s.snapshotRestore, aclWrite)
	s.autopilotRoutes() // autopilot.go
}

// Snapshots hold every token's secret once ACLs live in Raft: Consul asks
// acl:write for them.
func aclWrite(p *acl.Policy, _ *http.Request, _ string) bool { return p.ACLWrite() }

// raftServer is Consul's RaftServer.
type raftServer struct {
	ID              string
	Node            string
	Address         string
	Leader          bool
	ProtocolVersion string
	Voter           bool
	LastIndex       uint64
}

func (s *Server) raftConfiguration(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	_, n, ok := s.raftRead(w, r)
	if !ok {
		return
	}
	servers, err := n.Configuration()
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	leader, _ := n.Leader()
	snap := s.reg.Snapshot()
	out := struct {
		Servers []raftServer
		Index   uint64
	}{Servers: []raftServer{}, Index: n.LastIndex()}
	for _, sv := range servers {
		rs := raftServer{ID: sv.ID, Node: "(unknown)", Address: sv.Address, Leader: sv.Address == leader,
			ProtocolVersion: n.ProtocolVersion(), Voter: sv.Voter}
		// A server's Raft ID is its node name or node ID.
		if _, ok := snap.Node(sv.ID); ok {
			rs.Node = sv.ID
		} else {
			for _, e := range snap.Nodes() {
				if e.ID == sv.ID {
					rs.Node = e.Name
					break
				}
			}
		}
		if sv.ID == n.ID() {
			rs.LastIndex = n.LastIndex() // others' are not known here
		}
		out.Servers = append(out.Servers, rs)
	}
	writeJSON(w, r, out)
}

func (s *Server) raftRemovePeer(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	v := r.URL.Query()
	id, addr := v.Get("id"), v.Get("address")
	switch {
	case !v.Has("id") && !v.Has("address"):
		httpError(w, http.StatusBadRequest, "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")
		return
	case v.Has("id") && v.Has("address"):
		httpError(w, http.StatusBadRequest, "Must specify only one of ?id or ?address")
		return
	}
	n, ok := s.raftWrite(w, r)
	if !ok {
		return
	}
	var err error
	if v.Has("address") {
		err = n.RemoveServerByAddress(addr)
	} else {
		err = s.removeByID(n, id)
	}
	if err != nil {
		raftError(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// raftTransferLeader is consul operator raft transfer-leader [-id ID]:
// the leader hands over to id, or to the voter hashicorp/raft picks.
func (s *Server) raftTransferLeader(w http.ResponseWriter, r *http.Request) {
	n, ok := s.localWrite(w, r)
	if !ok {
		return
	}
	if err := n.TransferLeadership(r.URL.Query().Get("id")); err != nil {
		raftError(w, err)
		return
	}
	writeJSON(w, r, struct{ Success bool }{true})
}

func (s *Server) removeByID(n *raft.Node, id string) error {
	servers, err := n.Configuration()
	if err != nil {
		return err
	}
	for _, sv := range servers {
		if sv.ID == id {
			return n.RemoveServer(id)
		}
	}
	return errors.New("id \"" + id + "\" was not found in the Raft configuration")
}

// snapshotSave answers an archive of the state (raft/ops.go describes
// it); X-Consul-Index is the log index it holds.
func (s *Server) snapshotSave(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	_, n, ok := s.raftRead(w, r)
	if !ok {
		return
	}
	var buf bytes.Buffer
	idx, err := n.SaveSnapshot(&buf)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	h := w.Header()
	h.Set("X-Consul-Index", strconv.FormatUint(idx, 10))
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	buf.WriteTo(w)
}

func (s *Server) snapshotRestore(w http.ResponseWriter, r *http.Request) {
	n, ok := s.localWrite(w, r)
	if !ok {
		return
	}
	switch err := n.RestoreSnapshot(r.Body); {
	case errors.Is(err, raft.ErrBadSnapshot):
		httpError(w, http.StatusBadRequest, "%v", err)
	case err != nil:
		raftError(w, err)
	default:
		w.WriteHeader(http.StatusOK)
	}
}
