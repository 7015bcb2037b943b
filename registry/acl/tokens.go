package acl

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"slices"
	"time"
)

// aclTokenIn is the body of a token write; the fields pier does not support
// are kept raw only to refuse them.
type aclTokenIn struct {
	AccessorID  string
	SecretID    string
	Description string
	aclGrantIn
	Roles             []*aclLink
	Local             bool
	TemplatedPolicies json.RawMessage
	AuthMethod        string
	ExpirationTTL     json.RawMessage
	ExpirationTime    json.RawMessage
}

// unsupported names the first field that asks for something pier lacks.
func (in *aclTokenIn) unsupported() string {
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{
		{"TemplatedPolicies", in.TemplatedPolicies}, {"ExpirationTTL", in.ExpirationTTL}, {"ExpirationTime", in.ExpirationTime},
	} {
		switch string(bytes.TrimSpace(f.raw)) {
		case "", "null", "[]", "0", `""`:
		default:
			return f.name
		}
	}
	if in.AuthMethod != "" {
		return "AuthMethod"
	}
	return ""
}

// tokenGrant checks what a token body asks for; false means a 400 was sent.
func tokenGrant(w http.ResponseWriter, t *aclTable, in *aclTokenIn) (grant, bool) {
	g, msg := t.check(in.aclGrantIn, "token")
	if msg == "" {
		g.Roles, msg = t.roleIDs(in.Roles)
	}
	if msg != "" {
		httpError(w, http.StatusBadRequest, "Invalid Token: %s", msg)
		return g, false
	}
	return g, true
}

// grantOf answers what a token has, as stored.
func grantOf(v aclTokenView) grant {
	g := grant{ServiceIdentities: v.ServiceIdentities, NodeIdentities: v.NodeIdentities}
	for _, l := range v.Policies {
		g.Policies = append(g.Policies, l.ID)
	}
	for _, l := range v.Roles {
		g.Roles = append(g.Roles, l.ID)
	}
	return g
}

// policyIDs resolves a token's policy links; "" and a message on error.
func (t *aclTable) policyIDs(links []*aclLink) ([]string, string) {
	var ids []string
	seen := map[string]bool{}
	for _, l := range links {
		if l == nil || l.ID == "" && l.Name == "" {
			return nil, "a policy link needs an ID or a Name"
		}
		pe, ok := t.policyByRef(*l)
		if !ok {
			ref := l.ID
			if ref == "" {
				ref = l.Name
			}
			return nil, "cannot find policy " + ref
		}
		if !seen[pe.view.ID] {
			seen[pe.view.ID] = true
			ids = append(ids, pe.view.ID)
		}
	}
	return ids, ""
}

func (s *Endpoints) aclTokenCreate(w http.ResponseWriter, r *http.Request) {
	var in aclTokenIn
	if !s.aclOn(w) || !s.decodeJSONBody(w, r, &in) {
		return
	}
	if f := in.unsupported(); f != "" {
		httpError(w, http.StatusBadRequest, "Invalid Token: pier does not support %s", f)
		return
	}
	for _, f := range []struct{ name, v string }{{"AccessorID", in.AccessorID}, {"SecretID", in.SecretID}} {
		if f.v != "" && !validUUID(f.v) {
			httpError(w, http.StatusBadRequest, "Invalid Token: %s is not a valid UUID", f.name)
			return
		}
	}
	if in.AccessorID == "" {
		in.AccessorID = newUUID()
	}
	if in.SecretID == "" {
		in.SecretID = newUUID()
	}
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.syncLocked()
	if _, taken := t.tokens[in.AccessorID]; taken || in.AccessorID == anonymousAccessor {
		httpError(w, http.StatusBadRequest, "Invalid Token: AccessorID is already in use")
		return
	}
	if a.lookupIn(t, in.SecretID) != nil {
		httpError(w, http.StatusBadRequest, "Invalid Token: SecretID is already in use")
		return
	}
	g, ok := tokenGrant(w, t, &in)
	if !ok {
		return
	}
	st := storedToken{AccessorID: in.AccessorID, SecretID: in.SecretID, Description: in.Description,
		grant: g, Local: in.Local, CreateTime: time.Now().UTC()}
	s.writeStoredToken(w, r, st)
}

// writeStoredToken stores st and answers its view; a.mu held.
func (s *Endpoints) writeStoredToken(w http.ResponseWriter, r *http.Request, st storedToken) {
	s.putAndShow(w, r, "Token", aclTokenPrefix+st.AccessorID, st, func(t *aclTable) any {
		if te := t.tokens[st.AccessorID]; te != nil && !te.static {
			return te.view
		}
		return nil
	})
}

// storedTokenFor answers a token that the API may change; false means an
// error was sent. a.mu held.
func (s *Endpoints) storedTokenFor(w http.ResponseWriter, t *aclTable, id string) (*tokenEntry, bool) {
	te, ok := t.tokens[id]
	if !ok {
		httpError(w, http.StatusNotFound, "Cannot find token %q", id)
		return nil, false
	}
	if te.static {
		httpError(w, http.StatusBadRequest, "Token %s is defined in the agent's configuration file and cannot be changed through the API", id)
		return nil, false
	}
	return te, true
}

func (s *Endpoints) aclTokenUpdate(w http.ResponseWriter, r *http.Request) {
	var in aclTokenIn
	if !s.aclOn(w) || !s.decodeJSONBody(w, r, &in) {
		return
	}
	id := r.PathValue("id")
	if in.AccessorID != "" && in.AccessorID != id {
		httpError(w, http.StatusBadRequest, "Token Accessor ID in URL and payload do not match")
		return
	}
	if f := in.unsupported(); f != "" {
		httpError(w, http.StatusBadRequest, "Invalid Token: pier does not support %s", f)
		return
	}
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.syncLocked()
	te, ok := s.storedTokenFor(w, t, id)
	if !ok {
		return
	}
	if in.SecretID != "" && subtle.ConstantTimeCompare([]byte(in.SecretID), []byte(te.view.SecretID)) != 1 {
		httpError(w, http.StatusBadRequest, "Invalid Token: changing a token's SecretID is not permitted")
		return
	}
	if in.Local != te.view.Local {
		httpError(w, http.StatusBadRequest, "Invalid Token: cannot toggle local mode of %s", id)
		return
	}
	g, ok := tokenGrant(w, t, &in)
	if !ok {
		return
	}
	s.writeStoredToken(w, r, storedToken{AccessorID: id, SecretID: te.view.SecretID, Description: in.Description,
		grant: g, Local: te.view.Local, CreateTime: te.view.CreateTime})
}

func (s *Endpoints) aclTokenClone(w http.ResponseWriter, r *http.Request) {
	var in struct{ Description string }
	if !s.aclOn(w) || !s.decodeJSONBody(w, r, &in) {
		return
	}
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.syncLocked()
	te, ok := s.storedTokenFor(w, t, r.PathValue("id"))
	if !ok {
		return
	}
	s.writeStoredToken(w, r, storedToken{AccessorID: newUUID(), SecretID: newUUID(), Description: in.Description,
		grant: grantOf(te.view), Local: te.view.Local, CreateTime: time.Now().UTC()})
}

func (s *Endpoints) aclTokenDelete(w http.ResponseWriter, r *http.Request) {
	s.deleteObject(w, r, "Token", aclTokenPrefix, func(t *aclTable, id string) bool {
		if _, ok := t.tokens[id]; !ok {
			writeJSON(w, r, true) // already gone, perhaps deleted on another node
			return false
		}
		te, ok := s.storedTokenFor(w, t, id)
		if !ok {
			return false
		}
		if self := s.acl.lookupIn(t, RequestToken(r)); self == te {
			httpError(w, http.StatusBadRequest, "Deletion of the request's authorization token is not permitted")
			return false
		}
		return true
	})
}

// shown is a token as the requester may see it: the secret only with
// acl:write, as Consul.
func shown(r *http.Request, te *tokenEntry) aclTokenView {
	v := te.view
	if p := PolicyOf(r); p == nil || !p.ACLWrite() {
		v.SecretID = redacted
	}
	return v
}

func (s *Endpoints) aclTokenRead(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	te, ok := s.acl.current().tokens[r.PathValue("id")]
	if !ok {
		httpError(w, http.StatusForbidden, "ACL not found")
		return
	}
	writeJSON(w, r, shown(r, te))
}

// aclTokenSelf answers the token the request carries (tokens.default for
// none), secret included: the caller has it already.
func (s *Endpoints) aclTokenSelf(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	var te *tokenEntry
	if secret := RequestToken(r); secret != "" {
		te = s.acl.lookup(secret)
	} else {
		te = s.acl.defaultEntry()
	}
	if te == nil {
		httpError(w, http.StatusForbidden, "ACL not found")
		return
	}
	writeJSON(w, r, te.view)
}

func (s *Endpoints) aclTokenList(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	policy, role := r.URL.Query().Get("policy"), r.URL.Query().Get("role")
	out := []aclTokenView{}
	for _, te := range s.acl.current().sortedTokens() {
		if policy != "" && !linksTo(te.view.Policies, policy) || role != "" && !linksTo(te.view.Roles, role) {
			continue
		}
		out = append(out, shown(r, te))
	}
	writeJSON(w, r, out)
}

func linksTo(links []aclLink, id string) bool {
	return slices.ContainsFunc(links, func(l aclLink) bool { return l.ID == id })
}
