package api

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// The /v1/query endpoints. They are the servers' (a client forwards them,
// a follower sends writes and default reads to the leader); execute runs
// on the server that serves it: the local catalog of its registry, then,
// with no instance left, the datacenters of the query's failover in order
// (through ?dc=, as the HTTP API reads another datacenter).

func (s *Server) queryRoutes() {
	// Consul's query rules, checked by the handlers: they depend on the
	// stored query (mayWriteQuery, mayReadQuery).
	s.raftRoute("POST /v1/query", s.queryCreate, acl.Anyone)
	s.raftRoute("GET /v1/query", s.queryList, acl.Anyone)
	s.raftRoute("GET /v1/query/{id}", s.queryGet, acl.Anyone)
	s.raftRoute("PUT /v1/query/{id}", s.queryUpdate, acl.Anyone)
	s.raftRoute("DELETE /v1/query/{id}", s.queryDelete, acl.Anyone)
	s.raftRoute("GET /v1/query/{id}/execute", s.queryExecute, acl.Anyone)
	s.raftRoute("GET /v1/query/{id}/explain", s.queryExplain, acl.Anyone)
}

// queryEntry reads the stored query under key.
func queryEntry(e *registry.KVEntry) (preparedQuery, bool) {
	var q preparedQuery
	if json.Unmarshal(e.Value, &q) != nil {
		return q, false
	}
	q.CreateIndex, q.ModifyIndex = e.CreateIndex, e.ModifyIndex
	return q, true
}

// storedQuery finds a stored query by ID, else by its exact name, as it
// is stored (a template unrendered).
func storedQuery(st *raft.State, idOrName string) (preparedQuery, bool) {
	if e, ok := st.KV(queryPrefix + idOrName); ok {
		return queryEntry(e)
	}
	if id, ok := queryIDByName(st, idOrName); ok {
		if e, ok := st.KV(queryPrefix + id); ok {
			return queryEntry(e)
		}
	}
	return preparedQuery{}, false
}

// nameKey is the key that holds the ID of the query called name: names
// compare without case, as Consul's index of names (and DNS's).
func nameKey(name string) string { return queryNamePrefix + strings.ToLower(name) }

// legacyNameKey is where a pier before case-blind names kept the ID of a
// query called name, when that differs from nameKey; "" when it does not.
func legacyNameKey(name string) string {
	if name == strings.ToLower(name) {
		return ""
	}
	return queryNamePrefix + name
}

// queryIDByName answers the ID of the query called name (without case).
func queryIDByName(st *raft.State, name string) (string, bool) {
	if e, ok := st.KV(nameKey(name)); ok {
		return string(e.Value), true
	}
	if e, ok := st.KV(queryNamePrefix + name); ok { // written before names compared without case
		return string(e.Value), true
	}
	return "", false
}

// resolveQuery finds the query that idOrName runs, as Consul resolves
// /v1/query/{id}/execute and /explain: by ID (not a template's), else by
// exact name, else the template with the longest name that starts
// idOrName (without case); a template comes back rendered for idOrName.
// found is false when nothing matches; err is a template's.
func (s *Server) resolveQuery(st *raft.State, idOrName string) (q preparedQuery, found bool, err error) {
	if e, ok := st.KV(queryPrefix + idOrName); ok {
		if q, ok = queryEntry(e); ok && q.isTemplate() {
			return q, true, badRequest("prepared query templates can only be resolved up by name, not by ID")
		}
		return q, ok, nil
	}
	id, ok := queryIDByName(st, idOrName)
	if !ok {
		lower := strings.ToLower(idOrName)
		for i := len(lower); i >= 0 && id == ""; i-- {
			if e, ok := st.KV(queryTemplatePrefix + lower[:i]); ok {
				id = string(e.Value)
			}
		}
	}
	e, ok := st.KV(queryPrefix + id)
	if id == "" || !ok {
		return q, false, nil
	}
	if q, ok = queryEntry(e); !ok || !q.isTemplate() {
		return q, ok, nil
	}
	ct, err := s.templates.compiled(q)
	if err != nil {
		return q, true, err
	}
	q, err = ct.render(idOrName, "")
	return q, true, err
}

// aclName is the name Consul's query rules judge q by: its name, and a
// template's even when empty (the prefix it takes); false for a query
// with neither, which no rule governs: whoever has its ID may use it.
func (q *preparedQuery) aclName() (string, bool) {
	return q.Name, q.Name != "" || q.isTemplate()
}

// mayWriteQuery: as Consul, query:write on a named query's (or a
// template's) name; an unnamed query needs nothing. False means the 403
// was sent.
func mayWriteQuery(w http.ResponseWriter, r *http.Request, q *preparedQuery) bool {
	p := acl.PolicyOf(r)
	name, ok := q.aclName()
	if p == nil || !ok || p.QueryWrite(name) {
		return true
	}
	acl.DeniedOn(w, p, "query:write", name)
	return false
}

// mayReadQuery: query:read on a named query's name. An unnamed one is
// shown (by ID) to anyone when byID, as Consul's GET /v1/query/:id, and
// else, in lists and explain, only to a token with acl:write.
func mayReadQuery(r *http.Request, q *preparedQuery, byID bool) bool {
	p := acl.PolicyOf(r)
	if p == nil || p.ACLWrite() {
		return true
	}
	if name, ok := q.aclName(); ok {
		return p.QueryRead(name)
	}
	return byID
}

// shown is q as r may see it: its token redacted unless r may write ACLs
// (management or acl = "write"), as Consul.
func shown(r *http.Request, q preparedQuery) preparedQuery {
	if p := acl.PolicyOf(r); p != nil && !p.ACLWrite() && q.Token != "" {
		q.Token = redactedToken
	}
	return q
}

func (s *Server) queryCreate(w http.ResponseWriter, r *http.Request) {
	n, b, ok := s.localWriteBody(w, r)
	if !ok {
		return
	}
	q, err := decodeQueryBody(b)
	if err == nil && q.ID != "" {
		err = badRequest("ID must be empty when creating a new prepared query")
	}
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	// As Consul: the ACL check comes before the checks of the definition.
	if !mayWriteQuery(w, r, &q) {
		return
	}
	if err := q.validate(); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	q.ID = registry.NewUUID()
	if s.storeQuery(w, n, q, nil) {
		writeJSON(w, r, map[string]string{"ID": q.ID})
	}
}

func (s *Server) queryUpdate(w http.ResponseWriter, r *http.Request) {
	n, b, ok := s.localWriteBody(w, r)
	if !ok {
		return
	}
	q, err := decodeQueryBody(b)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	id := r.PathValue("id")
	if q.ID != "" && q.ID != id {
		httpError(w, http.StatusBadRequest, "Invalid prepared query: ID %q in the body is not the one of the path, %q", q.ID, id)
		return
	}
	q.ID = id
	e, found := n.State().KV(queryPrefix + id)
	if !found {
		httpError(w, http.StatusNotFound, "Cannot modify non-existent prepared query: '%s'", id)
		return
	}
	old, _ := queryEntry(e)
	if !mayWriteQuery(w, r, &q) || !mayWriteQuery(w, r, &old) {
		return
	}
	if err := q.validate(); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if q.Token == redactedToken {
		q.Token = old.Token
	}
	old.ModifyIndex = e.ModifyIndex
	s.storeQuery(w, n, q, &old)
}

// storeQuery writes q (replacing old, when given), its name, its
// template's name and its session's hold on it in one transaction; true
// means it was written.
func (s *Server) storeQuery(w http.ResponseWriter, n *raft.Node, q preparedQuery, old *preparedQuery) bool {
	q.CreateIndex, q.ModifyIndex = 0, 0
	v, err := json.Marshal(q)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return false
	}
	// why says what a failed operation means, by its index.
	why := map[int]string{}
	var ops []raft.KVOp
	add := func(op raft.KVOp, failure string) {
		if failure != "" {
			why[len(ops)] = failure
		}
		ops = append(ops, op)
	}
	set := raft.KVOp{Verb: raft.KVCAS, Key: queryPrefix + q.ID, Value: v}
	if old != nil {
		set.Index = old.ModifyIndex // nobody changed it since it was read
		if old.Name != "" && legacyNameKey(old.Name) != "" {
			add(raft.KVOp{Verb: raft.KVDelete, Key: legacyNameKey(old.Name)}, "")
		}
		if old.Name != "" && !strings.EqualFold(old.Name, q.Name) {
			add(raft.KVOp{Verb: raft.KVDelete, Key: nameKey(old.Name)}, "")
		}
		if old.isTemplate() && (!q.isTemplate() || !strings.EqualFold(old.Name, q.Name)) {
			add(raft.KVOp{Verb: raft.KVDelete, Key: queryTemplatePrefix + strings.ToLower(old.Name)}, "")
		}
		if old.Session != "" {
			add(raft.KVOp{Verb: raft.KVDelete, Key: raft.SessionBoundKey(old.Session, q.ID)}, "")
		}
	}
	casAt := len(ops)
	add(set, "Invalid prepared query: it changed while it was updated; retry")
	if q.Name != "" {
		if old == nil || !strings.EqualFold(old.Name, q.Name) {
			taken := fmt.Sprintf("Invalid prepared query: name %q aliases an existing query name", q.Name)
			add(raft.KVOp{Verb: raft.KVCheckNotExists, Key: nameKey(q.Name)}, taken)
		}
		add(raft.KVOp{Verb: raft.KVSet, Key: nameKey(q.Name), Value: []byte(q.ID)}, "")
	}
	if q.isTemplate() && (old == nil || !old.isTemplate() || !strings.EqualFold(old.Name, q.Name)) {
		taken := "Invalid prepared query: a query template with an empty name already exists"
		if q.Name != "" {
			taken = fmt.Sprintf("Invalid prepared query: name %q aliases an existing query name", q.Name)
		}
		add(raft.KVOp{Verb: raft.KVCheckNotExists, Key: queryTemplatePrefix + strings.ToLower(q.Name)}, taken)
		add(raft.KVOp{Verb: raft.KVSet, Key: queryTemplatePrefix + strings.ToLower(q.Name), Value: []byte(q.ID)}, "")
	}
	if q.Session != "" {
		// The session's destruction deletes the query, as Consul's; this
		// write fails when the session does not exist.
		add(raft.KVOp{Verb: raft.KVSet, Key: raft.SessionBoundKey(q.Session, q.ID), Value: []byte(strings.Join(q.keys(), "\n"))}, "")
	}
	res, err := n.Txn(ops)
	if !applied(w, res, err) {
		return false
	}
	if len(res.Errors) > 0 {
		e := res.Errors[0]
		switch m, ok := why[e.OpIndex]; {
		case e.OpIndex == casAt:
			httpError(w, http.StatusConflict, "%s", m)
		case ok:
			httpError(w, http.StatusBadRequest, "%s", m)
		default:
			httpError(w, http.StatusBadRequest, "Invalid prepared query: %s", e.What)
		}
		return false
	}
	return true
}

// keys are the keys q is stored under.
func (q *preparedQuery) keys() []string {
	out := []string{queryPrefix + q.ID}
	if q.Name != "" {
		out = append(out, nameKey(q.Name))
		if k := legacyNameKey(q.Name); k != "" {
			out = append(out, k)
		}
	}
	if q.isTemplate() {
		out = append(out, queryTemplatePrefix+strings.ToLower(q.Name))
	}
	return out
}

func (s *Server) queryDelete(w http.ResponseWriter, r *http.Request) {
	n, ok := s.localWrite(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	e, found := n.State().KV(queryPrefix + id)
	if !found {
		return // as Consul: deleting what is not there is no error
	}
	q, _ := queryEntry(e)
	if !mayWriteQuery(w, r, &q) {
		return
	}
	var ops []raft.KVOp
	for _, k := range q.keys() {
		ops = append(ops, raft.KVOp{Verb: raft.KVDelete, Key: k})
	}
	if q.Session != "" {
		ops = append(ops, raft.KVOp{Verb: raft.KVDelete, Key: raft.SessionBoundKey(q.Session, q.ID)})
	}
	res, err := n.Txn(ops)
	applied(w, res, err)
}

// queryRead answers the state a query read is served from, with its
// index header; false means the request was answered or forwarded.
func (s *Server) queryRead(w http.ResponseWriter, r *http.Request) (*raft.State, bool) {
	if !s.localDC(w, r) {
		return nil, false
	}
	st, _, ok := s.raftRead(w, r)
	if ok {
		w.Header().Set("X-Consul-Index", strconv.FormatUint(st.KVIndex(), 10))
	}
	return st, ok
}

func (s *Server) queryList(w http.ResponseWriter, r *http.Request) {
	st, ok := s.queryRead(w, r)
	if !ok {
		return
	}
	out := []preparedQuery{}
	for _, e := range st.KVList(queryPrefix) {
		if q, ok := queryEntry(e); ok && mayReadQuery(r, &q, false) {
			out = append(out, shown(r, q))
		}
	}
	writeJSON(w, r, out)
}

func (s *Server) queryGet(w http.ResponseWriter, r *http.Request) {
	if q, ok := s.readQuery(w, r, false); ok {
		writeJSON(w, r, []preparedQuery{shown(r, q)})
	}
}

// queryExplain answers the query a name runs, a template rendered for
// that name, as Consul's.
func (s *Server) queryExplain(w http.ResponseWriter, r *http.Request) {
	if q, ok := s.readQuery(w, r, true); ok {
		writeJSON(w, r, map[string]any{"Query": shown(r, q)})
	}
}

// readQuery answers the query r names (an ID or a name; with resolve, as
// execute resolves it), which r may read; false means the request was
// answered or forwarded.
func (s *Server) readQuery(w http.ResponseWriter, r *http.Request, resolve bool) (preparedQuery, bool) {
	st, ok := s.queryRead(w, r)
	if !ok {
		return preparedQuery{}, false
	}
	var q preparedQuery
	if resolve {
		var err error
		if q, ok, err = s.resolveQuery(st, r.PathValue("id")); err != nil {
			httpError(w, http.StatusBadRequest, "%v", err)
			return q, false
		}
	} else {
		q, ok = storedQuery(st, r.PathValue("id"))
	}
	if !ok {
		httpError(w, http.StatusNotFound, "Query not found")
		return q, false
	}
	if !mayReadQuery(r, &q, !resolve) {
		acl.Denied(w)
		return q, false
	}
	return q, true
}

// queryResult is Consul's PreparedQueryExecuteResponse.
type queryResult struct {
	Service    string
	Namespace  string `json:",omitempty"`
	Partition  string `json:",omitempty"`
	Nodes      []serviceEntry
	DNS        queryDNS
	Datacenter string
	Failovers  int
}

func (s *Server) queryExecute(w http.ResponseWriter, r *http.Request) {
	st, ok := s.queryRead(w, r)
	if !ok {
		return
	}
	q, ok, err := s.resolveQuery(st, r.PathValue("id"))
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if !ok {
		httpError(w, http.StatusNotFound, "Query not found")
		return
	}
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 {
			httpError(w, http.StatusBadRequest, "limit: %q is not a count", v)
			return
		}
	}
	// As Consul, running a query needs no query rule: the answer holds
	// the instances whose node and service the query's token may read
	// when it has one, else the request's.
	p := acl.PolicyOf(r)
	if p != nil && q.Token != "" {
		if p = s.acl.Resolve(q.Token); p == nil {
			httpError(w, http.StatusForbidden, "ACL not found")
			return
		}
	}
	near := s.querySource(r, &q)
	// Another datacenter is read with the query's token when it has one,
	// else the request's, as Consul's failover; it filters its answer.
	res := s.runQuery(r.Context(), &q, p, near, limit, cmp.Or(q.Token, s.requestToken(r)))
	writeJSON(w, r, res)
}

// querySource answers the node q's answer is sorted near, as Consul's
// execute: ?near=, else Service.Near; "_agent" is the agent the request
// first reached, "_ip" the node whose address is the client's (none: no
// sort).
func (s *Server) querySource(r *http.Request, q *preparedQuery) string {
	near := cmp.Or(r.URL.Query().Get("near"), q.Service.Near)
	switch near {
	case "_agent":
		return s.origin(r)
	case "_ip":
		if a := sourceAddr(r); a != "" {
			for _, n := range s.reg.Snapshot().Nodes() {
				if n.Address == a {
					return n.Name
				}
			}
		}
		return ""
	}
	return near
}

// runQuery executes q: this datacenter's instances that q keeps and p may
// read (nil: ACLs off), shuffled,
// nearest to near first (near itself first, when it is among the first
// ten, even without coordinates, as Consul's), at most limit (0: all);
// none, then the failover datacenters in order until one has some, read
// with token, shuffled and not sorted (Consul sorts no other
// datacenter's answer: coordinates do not compare across datacenters).
func (s *Server) runQuery(ctx context.Context, q *preparedQuery, p *acl.Policy, near string, limit int, token string) queryResult {
	own := s.reg.Config().Datacenter
	res := queryResult{Service: q.Service.Service, DNS: q.DNS, Datacenter: own, Nodes: []serviceEntry{}}
	var local []registry.Instance
	for _, in := range s.reg.Snapshot().ServiceInstances(q.Service.Service) {
		if q.keep(in) && (p == nil || p.NodeRead(in.Node.Name) && p.ServiceRead(in.Service.Name)) {
			local = append(local, in)
		}
	}
	res.Nodes = queryNodes(local, own, limit, func(list []serviceEntry) {
		if near == "" {
			return
		}
		sortNearFrom(s, near, list, func(e *serviceEntry) string { return e.Node.Node })
		for i := 0; i < len(list) && i < 10; i++ {
			if strings.EqualFold(list[i].Node.Node, near) {
				list[0], list[i] = list[i], list[0]
				break
			}
		}
	})
	if len(res.Nodes) > 0 || s.cfg.WAN == nil {
		return res
	}
	var others []string
	for _, dc := range s.cfg.WAN.Datacenters() {
		if dc != own {
			others = append(others, dc)
		}
	}
	for _, dc := range q.failoverDatacenters(others) {
		res.Failovers++
		ctx, cancel := context.WithTimeout(ctx, s.cfg.RPCHoldTimeout)
		insts, err := Reader{s: s, token: token}.Instances(ctx, dc, q.Service.Service, "")
		cancel()
		if err != nil {
			s.log.Debug("prepared query failover", "query", q, "dc", dc, "err", err)
			continue
		}
		var kept []registry.Instance
		for _, in := range insts {
			if q.keep(in) {
				kept = append(kept, in)
			}
		}
		if len(kept) > 0 {
			res.Datacenter = dc
			res.Nodes = queryNodes(kept, dc, limit, nil)
			break
		}
	}
	return res
}

// queryNodes shuffles insts into the answer's shape, sorts them (when
// sort is given) and keeps the first limit.
func queryNodes(insts []registry.Instance, dc string, limit int, sort func([]serviceEntry)) []serviceEntry {
	out := make([]serviceEntry, 0, len(insts))
	for _, in := range insts {
		out = append(out, serviceEntry{Node: toNode(in.Node), Service: toCatalogNodeService(in.Service, dc), Checks: toHealthChecks(in.Checks)})
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if sort != nil {
		sort(out)
	}
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// Query executes the prepared query called idOrName (an ID or a name) of
// dc ("" or this datacenter's name: this one's) for DNS
// (name.query.consul, name.query.dc2.consul), asked by src: the
// datacenter that answered, the answer's TTL and its instances. As
// Consul's DNS, it passes no ?near=: the answer is sorted only by the
// query's own Service.Near ("_agent": this agent; "_ip": the node at src).
// Another datacenter's query runs there, as Consul's.
func (rd Reader) Query(ctx context.Context, dc, idOrName string, src netip.Addr) (string, time.Duration, []registry.Instance, error) {
	v := url.Values{}
	if dc != "" && dc != rd.s.reg.Config().Datacenter {
		v.Set("dc", dc)
	}
	var res queryResult
	h := http.Header{}
	if src.IsValid() {
		h.Set(sourceHeader, src.Unmap().String())
	}
	if err := rd.getJSONWith(ctx, "/v1/query/"+url.PathEscape(idOrName)+"/execute?"+v.Encode(), h, &res); err != nil {
		return "", 0, nil, err
	}
	ttl, _ := time.ParseDuration(res.DNS.TTL)
	out := make([]registry.Instance, 0, len(res.Nodes))
	for _, e := range res.Nodes {
		out = append(out, e.instance())
	}
	return res.Datacenter, ttl, out, nil
}
