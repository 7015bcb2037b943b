package acl

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/pier-dev/pier/registry/api/answer"
)

// Endpoints serves /v1/acl/* and /v1/agent/token/*: the objects of the
// store, with Consul's paths and shapes (roles and identities in roles.go;
// auth methods, templated policies and expiry are not supported). They
// live beside the store because they read and write its table; registry/api
// mounts them (Routes) behind its authorize gate.
type Endpoints struct {
	acl     *Authorizer // nil: ACLs off, every endpoint answers 401
	node    string      // this agent's node, for the agent tokens
	maxBody int64       // request bodies above it get 413
	log     *slog.Logger
}

// NewEndpoints serves the objects of a (nil: ACLs off) for the agent of
// node; log nil discards.
func NewEndpoints(a *Authorizer, node string, maxBody int64, log *slog.Logger) *Endpoints {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Endpoints{acl: a, node: node, maxBody: maxBody, log: log}
}

const tokenSelfPath = "/v1/acl/token/self"

// Permissions of the /v1/acl/ routes: acl = "read" for the GETs, "write"
// for the rest, and /v1/acl/token/self (whatever the method) for any known
// token.
func aclRead(p *Policy, _ *http.Request, _ string) bool  { return p.ACLRead() }
func aclWrite(p *Policy, _ *http.Request, _ string) bool { return p.ACLWrite() }

// aclWriteOrSelf is for the write routes that /v1/acl/token/self also
// matches.
func aclWriteOrSelf(p *Policy, r *http.Request, _ string) bool {
	return r.URL.Path == tokenSelfPath || p.ACLWrite()
}

// aclAny is for the catch-all: any method, any path under /v1/acl/.
func aclAny(p *Policy, r *http.Request, _ string) bool {
	switch {
	case r.URL.Path == tokenSelfPath:
		return true
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		return p.ACLRead()
	}
	return p.ACLWrite()
}

// Routes registers every endpoint, each with its permission: through
// agreed the writes of the cluster's ACL objects, whose handlers must run
// where the Writer writes (with servers, the Raft leader: the API forwards
// them there, as its KV writes), through add the rest (reads, served from
// this agent's snapshot, and the agent's own tokens). Writes take PUT and
// POST: Consul's clients send PUT, curl users POST.
func (s *Endpoints) Routes(add, agreed func(pattern string, h http.HandlerFunc, perm Perm)) {
	writes := func(path string, h http.HandlerFunc, perm Perm) {
		agreed("PUT "+path, h, perm)
		agreed("POST "+path, h, perm)
	}
	// Policies and roles have the same routes; an ID or a name in the
	// path picks the object, no ID on a write creates one.
	// Policies and roles are global: in a secondary datacenter their
	// writes are the primary's (toPrimary).
	objects := func(noun, plural string, put, read, del, list http.HandlerFunc) {
		writes("/v1/acl/"+noun, s.toPrimary(noun, put, always), aclWrite)
		add("GET /v1/acl/"+noun+"/{id}", read, aclRead)
		add("GET /v1/acl/"+noun+"/name/{name}", read, aclRead)
		writes("/v1/acl/"+noun+"/{id}", s.toPrimary(noun, put, always), aclWrite)
		agreed("DELETE /v1/acl/"+noun+"/{id}", s.toPrimary(noun, del, always), aclWrite)
		add("GET /v1/acl/"+plural, list, aclRead)
	}
	objects("policy", "policies", s.aclPolicyPut, s.aclPolicyRead, s.aclPolicyDelete, s.aclPolicyList)
	objects("role", "roles", s.aclRolePut, s.aclRoleRead, s.aclRoleDelete, s.aclRoleList)

	// Tokens are global unless Local: a global token's writes are the
	// primary's, a local one's this datacenter's.
	writes("/v1/acl/token", s.toPrimary("token", s.aclTokenCreate, s.globalByBody), aclWrite)
	add("GET "+tokenSelfPath, s.tokenRead(s.aclTokenSelf), Anyone)
	add("GET /v1/acl/token/{id}", s.tokenRead(s.aclTokenRead), aclRead)
	writes("/v1/acl/token/{id}", s.toPrimary("token", s.aclTokenUpdate, s.globalByBody), aclWriteOrSelf)
	writes("/v1/acl/token/{id}/clone", s.toPrimary("token", s.aclTokenClone, s.globalClone), aclWrite)
	agreed("DELETE /v1/acl/token/{id}", s.toPrimary("token", s.aclTokenDelete, s.globalDelete), aclWriteOrSelf)
	add("GET /v1/acl/tokens", s.tokenRead(s.aclTokenList), aclRead)

	// Anyone may ask: it works once per cluster (bootstrap.go), in the
	// primary datacenter.
	writes("/v1/acl/bootstrap", s.aclBootstrap, Anyone)

	// What a secondary datacenter's leader replicates (replication.go).
	add("GET "+ReplicatePath, s.aclReplicateState, aclRead)

	// This agent's own tokens, set here. The handler checks, besides, what
	// the token being set grants.
	add("PUT /v1/agent/token/{kind}", s.agentToken, AgentWrite(s.node))
	add("POST /v1/agent/token/{kind}", s.agentToken, AgentWrite(s.node))
	// Everything else under /v1/acl/ (auth methods, replication...).
	add("/v1/acl/", func(w http.ResponseWriter, r *http.Request) {
		if s.aclOn(w) {
			httpError(w, http.StatusNotFound, "pier does not support %s", r.URL.Path)
		}
	}, aclAny)
}

func (s *Endpoints) self() string { return s.node }

// aclOn answers Consul's 401 when ACLs are off; false means it was sent.
func (s *Endpoints) aclOn(w http.ResponseWriter) bool {
	if s.acl == nil {
		httpError(w, http.StatusUnauthorized, "ACL support disabled")
		return false
	}
	return true
}

// decodeJSONBody reads a JSON body (unknown fields ignored, as Consul
// does); false means a 400 or 413 was sent.
func (s *Endpoints) decodeJSONBody(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			httpError(w, http.StatusRequestEntityTooLarge, "Request body too large: limit is %d bytes", mbe.Limit)
		} else {
			httpError(w, http.StatusBadRequest, "Reading request body: %v", err)
		}
		return false
	}
	if len(bytes.TrimSpace(b)) == 0 {
		b = []byte("{}")
	}
	if err := json.Unmarshal(b, v); err != nil {
		httpError(w, http.StatusBadRequest, "Request decode failed: %v", err)
		return false
	}
	return true
}

// decodeWrite decodes the body of a policy or role write into in, whose
// ID field is bodyID, and answers the ID to write: a new one when the path
// has none (the body may not name one either), else the path's (the body
// may repeat it). what is "Policy" or "Role", for messages; false means an
// error was sent.
func (s *Endpoints) decodeWrite(w http.ResponseWriter, r *http.Request, in any, bodyID *string, what string) (id string, create, ok bool) {
	if !s.aclOn(w) || !s.decodeJSONBody(w, r, in) {
		return "", false, false
	}
	id = r.PathValue("id")
	switch {
	case id == "" && *bodyID != "":
		httpError(w, http.StatusBadRequest, "Cannot specify the ID when creating a new %s", strings.ToLower(what))
		return "", false, false
	case id == "":
		return newUUID(), true, true
	case *bodyID != "" && *bodyID != id:
		httpError(w, http.StatusBadRequest, "%s ID in URL and payload do not match", what)
		return "", false, false
	}
	return id, false, true
}

// readRef answers the policy or role (what) that the path names by ID or,
// on the /name/ routes, by name; find looks it up in the table, view
// answers what is shown of it, notFound is Consul's message for none.
func readRef[E any](s *Endpoints, w http.ResponseWriter, r *http.Request, what, notFound string,
	find func(*aclTable, aclLink) (*E, bool), view func(*E) any) {
	if !s.aclOn(w) {
		return
	}
	ref := aclLink{ID: r.PathValue("id"), Name: r.PathValue("name")}
	if ref.ID == "" && ref.Name == "" {
		httpError(w, http.StatusBadRequest, "Missing %s ID", what)
		return
	}
	e, ok := find(s.acl.current(), ref)
	if !ok {
		httpError(w, http.StatusNotFound, "%s", notFound)
		return
	}
	writeJSON(w, r, view(e))
}

// putAndShow stores v under key and answers the view that the rebuilt
// table has for it (view answers nil for none); a.mu held. what is
// "Policy", "Role" or "Token", for messages.
func (s *Endpoints) putAndShow(w http.ResponseWriter, r *http.Request, what, key string, v any, view func(*aclTable) any) {
	t, err := s.acl.put(key, v)
	if err != nil {
		writeError(w, "Invalid "+what, err)
		return
	}
	out := view(t)
	if out == nil {
		httpError(w, http.StatusInternalServerError, "the %s was written but is not in the table", strings.ToLower(what))
		return
	}
	writeJSON(w, r, out)
}

// deleteObject is the DELETE of a policy, role or token (what, stored
// under prefix) that the path's {id} names: with a.mu held, check looks at
// the fresh table and answers false after answering the request itself
// (an error, or Consul's true for what is gone already); else the object
// is deleted and the answer is true.
func (s *Endpoints) deleteObject(w http.ResponseWriter, r *http.Request, what, prefix string, check func(t *aclTable, id string) bool) {
	if !s.aclOn(w) {
		return
	}
	id := r.PathValue("id")
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	if !check(a.syncLocked(), id) {
		return
	}
	if err := a.del(prefix + id); err != nil {
		writeError(w, "Invalid "+what, err)
		return
	}
	writeJSON(w, r, true)
}

// writeJSON, httpError and writeError are this package's short names for
// registry/api/answer's, which the API and the ACL endpoints share.
func writeJSON(w http.ResponseWriter, r *http.Request, v any) { answer.JSON(w, r, v) }

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	answer.Error(w, code, format, args...)
}

func writeError(w http.ResponseWriter, prefix string, err error) { answer.StoreError(w, prefix, err) }
