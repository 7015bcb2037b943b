package acl

import (
	"net/http"
	"regexp"
)

// The /v1/acl/policy endpoints (routes in endpoints.go).

// policyNameRE is Consul's rule for policy names.
var policyNameRE = regexp.MustCompile(`^[A-Za-z0-9\-_]{1,128}$`)

type aclPolicyIn struct {
	ID          string
	Name        string
	Description string
	Rules       string
	Datacenters []string
}

func (s *Endpoints) aclPolicyCreate(w http.ResponseWriter, r *http.Request) {
	var in aclPolicyIn
	if !s.aclOn(w) || !s.decodeJSONBody(w, r, &in) {
		return
	}
	if in.ID != "" {
		httpError(w, http.StatusBadRequest, "Cannot specify the ID when creating a new policy")
		return
	}
	s.aclPolicyWrite(w, r, in, newUUID(), true)
}

func (s *Endpoints) aclPolicyUpdate(w http.ResponseWriter, r *http.Request) {
	var in aclPolicyIn
	if !s.aclOn(w) || !s.decodeJSONBody(w, r, &in) {
		return
	}
	id := r.PathValue("id")
	if in.ID != "" && in.ID != id {
		httpError(w, http.StatusBadRequest, "Policy ID in URL and payload do not match")
		return
	}
	s.aclPolicyWrite(w, r, in, id, false)
}

func (s *Endpoints) aclPolicyWrite(w http.ResponseWriter, r *http.Request, in aclPolicyIn, id string, create bool) {
	if !policyNameRE.MatchString(in.Name) {
		httpError(w, http.StatusBadRequest, "Invalid Policy: invalid Name %q: 1 to 128 letters, digits, - and _", in.Name)
		return
	}
	if _, err := ParseRules(in.Rules); err != nil {
		httpError(w, http.StatusBadRequest, "Invalid Policy: failed to parse rules: %v", err)
		return
	}
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.refreshLocked()
	if !create {
		pe, ok := t.policies[id]
		if !ok {
			httpError(w, http.StatusNotFound, "Cannot find policy %q", id)
			return
		}
		if pe.builtin {
			httpError(w, http.StatusBadRequest, "Invalid Policy: the builtin %s policy cannot be changed", managementPolicyName)
			return
		}
	}
	if o, ok := t.byName[in.Name]; ok && o.view.ID != id {
		httpError(w, http.StatusBadRequest, "Invalid Policy: A Policy with Name %q already exists", in.Name)
		return
	}
	t, err := a.put(aclPolicyPrefix+id, storedPolicy{ID: id, Name: in.Name, Description: in.Description, Rules: in.Rules, Datacenters: in.Datacenters})
	if err != nil {
		writeError(w, "Invalid Policy", err)
		return
	}
	pe, ok := t.policies[id]
	if !ok {
		httpError(w, http.StatusInternalServerError, "the policy was written but is not in the table")
		return
	}
	writeJSON(w, r, pe.view)
}

func (s *Endpoints) aclPolicyRead(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	s.writePolicy(w, r, aclLink{ID: r.PathValue("id")})
}

func (s *Endpoints) aclPolicyReadByName(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	s.writePolicy(w, r, aclLink{Name: r.PathValue("name")})
}

func (s *Endpoints) writePolicy(w http.ResponseWriter, r *http.Request, ref aclLink) {
	if ref.ID == "" && ref.Name == "" {
		httpError(w, http.StatusBadRequest, "Missing policy ID")
		return
	}
	pe, ok := s.acl.current().policyByRef(ref)
	if !ok {
		httpError(w, http.StatusNotFound, "ACL policy not found")
		return
	}
	writeJSON(w, r, pe.view)
}

func (s *Endpoints) aclPolicyDelete(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	id := r.PathValue("id")
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	pe, ok := a.refreshLocked().policies[id]
	if ok && pe.builtin {
		httpError(w, http.StatusBadRequest, "Delete operation not permitted on the builtin %s policy", managementPolicyName)
		return
	}
	// An unknown ID is no error: it may have been deleted on another node.
	if ok {
		if err := a.del(aclPolicyPrefix + id); err != nil {
			writeError(w, "Invalid Policy", err)
			return
		}
	}
	writeJSON(w, r, true)
}

// aclPolicyListEntry is Consul's ACLPolicyListEntry: no rules.
type aclPolicyListEntry struct {
	ID          string
	Name        string
	Description string
	Datacenters []string
	Hash        []byte
	CreateIndex uint64
	ModifyIndex uint64
}

func (s *Endpoints) aclPolicyList(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	list := s.acl.current().sortedPolicies()
	out := make([]aclPolicyListEntry, 0, len(list))
	for _, pe := range list {
		v := pe.view
		out = append(out, aclPolicyListEntry{ID: v.ID, Name: v.Name, Description: v.Description,
			Datacenters: v.Datacenters, CreateIndex: v.CreateIndex, ModifyIndex: v.ModifyIndex})
	}
	writeJSON(w, r, out)
}
