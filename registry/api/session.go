package api

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// Consul's sessions, on the Raft state. As Consul's, a session is guarded
// by the session rules of its node's name (session_prefix "": write to
// make, renew or destroy one, read to see it), checked where the request
// is served; node rules play no part.

func (s *Server) sessionRoutes() {
	s.raftWrites("/v1/session/create", s.sessionCreate, acl.Anyone)
	s.raftWrites("/v1/session/destroy/{id}", s.sessionDestroy, acl.Anyone)
	s.raftWrites("/v1/session/renew/{id}", s.sessionRenew, acl.Anyone)
	s.raftRoute("GET /v1/session/info/{id}", s.sessionInfo, acl.Anyone)
	s.raftRoute("GET /v1/session/node/{node}", s.sessionNode, acl.Anyone)
	s.raftRoute("GET /v1/session/list", s.sessionList, acl.Anyone)
}

// sessionJSON is Consul's Session.
type sessionJSON struct {
	ID            string
	Name          string
	Node          string
	LockDelay     time.Duration
	Behavior      string
	TTL           string
	NodeChecks    []string
	ServiceChecks []raft.ServiceCheck
	CreateIndex   uint64
	ModifyIndex   uint64
}

func toSessionJSON(e *raft.Session) sessionJSON {
	return sessionJSON{ID: e.ID, Name: e.Name, Node: e.Node, LockDelay: e.LockDelay, Behavior: e.Behavior,
		TTL: e.TTL, NodeChecks: e.NodeChecks, ServiceChecks: e.ServiceChecks,
		CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex}
}

// sessionRequest is the body of /v1/session/create; absent fields keep
// Consul's defaults.
type sessionRequest struct {
	Name          string
	Node          string
	LockDelay     json.RawMessage
	Behavior      string
	TTL           string
	NodeChecks    []string
	ServiceChecks []raft.ServiceCheck
	Checks        []string // before Consul 1.7: node checks
}

// lockDelayMinThreshold: Consul reads a LockDelay number below it as
// seconds, not nanoseconds (old clients sent seconds).
const lockDelayMinThreshold = 1000

// decodeSession reads a create body into a session with Consul's
// defaults; errors are the client's (400).
func decodeSession(body []byte, self string) (raft.Session, error) {
	req := sessionRequest{
		Node: self, Behavior: raft.BehaviorRelease,
		NodeChecks: []string{registry.SerfCheckID}, Checks: []string{registry.SerfCheckID},
	}
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			return raft.Session{}, fmt.Errorf("Request decode failed: %v", err)
		}
	}
	sess := raft.Session{Name: req.Name, Node: req.Node, Behavior: req.Behavior, TTL: req.TTL,
		ServiceChecks: req.ServiceChecks, LockDelay: 15 * time.Second}
	if len(req.LockDelay) > 0 && string(req.LockDelay) != "null" {
		var d time.Duration
		var str string
		var num float64
		switch {
		case json.Unmarshal(req.LockDelay, &str) == nil:
			var err error
			if d, err = time.ParseDuration(str); err != nil {
				return sess, fmt.Errorf("LockDelay: %q is not a duration such as 15s", str)
			}
		case json.Unmarshal(req.LockDelay, &num) == nil:
			d = time.Duration(num)
		default:
			return sess, fmt.Errorf("LockDelay: %s is neither a duration string nor a number of nanoseconds", req.LockDelay)
		}
		if d < 0 {
			return sess, fmt.Errorf("LockDelay: %v is negative", d)
		}
		if d < lockDelayMinThreshold {
			d *= time.Second
		}
		sess.LockDelay = d
	}
	switch sess.Behavior {
	case "":
		sess.Behavior = raft.BehaviorRelease
	case raft.BehaviorRelease, raft.BehaviorDelete:
	default:
		return sess, fmt.Errorf("Invalid Behavior setting '%s'", sess.Behavior)
	}
	if _, err := raft.ParseTTL(sess.TTL); err != nil {
		return sess, err
	}
	if sess.Node == "" {
		return sess, errors.New("Node: missing (Must provide Node)")
	}
	// Consul's reading of the old Checks beside NodeChecks: an explicit
	// empty Checks clears the node checks, the default serfHealth alone
	// adds nothing, other checks add to NodeChecks unless those were
	// given empty.
	checks := req.Checks
	switch {
	case len(checks) == 0:
		req.NodeChecks = nil
	case len(checks) == 1 && checks[0] == registry.SerfCheckID:
		checks = nil
	case len(req.NodeChecks) == 0:
		checks = nil
	}
	sess.NodeChecks = []string{}
	for _, c := range append(checks, req.NodeChecks...) {
		if !slices.Contains(sess.NodeChecks, c) {
			sess.NodeChecks = append(sess.NodeChecks, c)
		}
	}
	return sess, nil
}

// sessionHealthy checks, as Consul's state store, that a session's node is
// in the catalog and that its checks exist and are not critical.
func sessionHealthy(snap *registry.Snapshot, sess *raft.Session) error {
	if _, ok := snap.Node(sess.Node); !ok {
		return errors.New("Missing node registration")
	}
	checks := snap.AllNodeChecks(sess.Node)
	status := func(id string) (registry.Status, bool) {
		for _, c := range checks {
			if c.CheckID == id {
				return c.Status, true
			}
		}
		return "", false
	}
	ids := slices.Clone(sess.NodeChecks)
	for _, sc := range sess.ServiceChecks {
		ids = append(ids, sc.ID)
	}
	for _, id := range ids {
		st, ok := status(id)
		if !ok {
			return fmt.Errorf("Missing check '%s' registration", id)
		}
		if st == registry.StatusCritical || st == registry.StatusMaintenance {
			return fmt.Errorf("Check '%s' is in %s state", id, registry.StatusCritical)
		}
	}
	return nil
}

func newSessionID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func (s *Server) sessionCreate(w http.ResponseWriter, r *http.Request) {
	n, body, ok := s.localWriteBody(w, r)
	if !ok {
		return
	}
	sess, err := decodeSession(body, s.origin(r))
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if p := acl.PolicyOf(r); p != nil && !p.SessionWrite(sess.Node) {
		acl.DeniedOn(w, p, "session:write", sess.Node)
		return
	}
	if err := sessionHealthy(s.reg.Snapshot(), &sess); err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	for {
		sess.ID = newSessionID()
		if _, taken := n.State().Session(sess.ID); !taken {
			break
		}
	}
	res, err := n.CreateSession(sess)
	if !applied(w, res, err) {
		return
	}
	writeJSON(w, r, struct{ ID string }{sess.ID})
}

func (s *Server) sessionDestroy(w http.ResponseWriter, r *http.Request) {
	n, ok := s.localWrite(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	existing, found := n.State().Session(id)
	if !found {
		writeJSON(w, r, true) // nothing to destroy, as Consul
		return
	}
	if p := acl.PolicyOf(r); p != nil && !p.SessionWrite(existing.Node) {
		acl.DeniedOn(w, p, "session:write", existing.Node)
		return
	}
	if _, err := n.DestroySession(id); err != nil {
		raftError(w, err)
		return
	}
	writeJSON(w, r, true)
}

func (s *Server) sessionRenew(w http.ResponseWriter, r *http.Request) {
	n, ok := s.localWrite(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if e, found := n.State().Session(id); found {
		if p := acl.PolicyOf(r); p != nil && !p.SessionWrite(e.Node) {
			acl.DeniedOn(w, p, "session:write", e.Node)
			return
		}
	}
	sess, err := n.RenewSession(id)
	switch {
	case errors.Is(err, raft.ErrSessionNotFound):
		httpError(w, http.StatusNotFound, "Session id '%s' not found", id)
		return
	case err != nil:
		raftError(w, err)
		return
	}
	s.raftMeta(w, r, n)
	writeJSON(w, r, []sessionJSON{toSessionJSON(sess)})
}

// sessionsRead answers the sessions pick chooses, blocking on the sessions'
// index, those the token may not read (session:read on their node) left
// out.
func (s *Server) sessionsRead(w http.ResponseWriter, r *http.Request, pick func(*raft.State) []*raft.Session) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	st, n, ok := s.raftRead(w, r)
	if !ok {
		return
	}
	st = s.blockRaft(w, r, q, n, st, (*raft.State).SessionIndex)
	p := acl.PolicyOf(r)
	out := []sessionJSON{}
	for _, e := range pick(st) {
		if p == nil || p.SessionRead(e.Node) {
			out = append(out, toSessionJSON(e))
		}
	}
	if out, ok = filtered(w, q.filter, out); ok {
		writeJSON(w, r, out)
	}
}

func (s *Server) sessionInfo(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.sessionsRead(w, r, func(st *raft.State) []*raft.Session {
		if e, ok := st.Session(id); ok {
			return []*raft.Session{e}
		}
		return nil
	})
}

func (s *Server) sessionNode(w http.ResponseWriter, r *http.Request) {
	node := r.PathValue("node")
	s.sessionsRead(w, r, func(st *raft.State) []*raft.Session { return st.NodeSessions(node) })
}

func (s *Server) sessionList(w http.ResponseWriter, r *http.Request) {
	s.sessionsRead(w, r, (*raft.State).Sessions)
}
