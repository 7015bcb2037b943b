package acl

import (
	"net/http"
	"regexp"
	"sync"
)

// The /v1/acl/policy endpoints (routes in endpoints.go).

// nameChars is Consul's rule for policy and role names, less their
// length (1 to 128, and 1 to 256): a regexp with the bound, {1,256}, took
// a millisecond and 5,000 allocations of every process's start to compile;
// compiled at its first use, as most agents never name a policy.
var nameChars = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9\-_]+$`) })

func validName(s string, max int) bool { return len(s) <= max && nameChars().MatchString(s) }

type aclPolicyIn struct {
	ID          string
	Name        string
	Description string
	Rules       string
	Datacenters []string
}

// aclPolicyPut creates (no ID in the path) or updates a policy.
func (s *Endpoints) aclPolicyPut(w http.ResponseWriter, r *http.Request) {
	var in aclPolicyIn
	if id, create, ok := s.decodeWrite(w, r, &in, &in.ID, "Policy"); ok {
		s.aclPolicyWrite(w, r, in, id, create)
	}
}

func (s *Endpoints) aclPolicyWrite(w http.ResponseWriter, r *http.Request, in aclPolicyIn, id string, create bool) {
	if !validName(in.Name, 128) {
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
	t := a.syncLocked()
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
	s.putAndShow(w, r, "Policy", aclPolicyPrefix+id,
		storedPolicy{ID: id, Name: in.Name, Description: in.Description, Rules: in.Rules, Datacenters: in.Datacenters},
		func(t *aclTable) any {
			if pe := t.policies[id]; pe != nil {
				return pe.view
			}
			return nil
		})
}

// aclPolicyRead answers a policy by the ID or the name in the path.
func (s *Endpoints) aclPolicyRead(w http.ResponseWriter, r *http.Request) {
	readRef(s, w, r, "policy", "ACL policy not found", (*aclTable).policyByRef,
		func(pe *policyEntry) any { return pe.view })
}

func (s *Endpoints) aclPolicyDelete(w http.ResponseWriter, r *http.Request) {
	s.deleteObject(w, r, "Policy", aclPolicyPrefix, func(t *aclTable, id string) bool {
		pe, ok := t.policies[id]
		switch {
		case ok && pe.builtin:
			httpError(w, http.StatusBadRequest, "Delete operation not permitted on the builtin %s policy", managementPolicyName)
			return false
		case !ok: // no error: it may have been deleted on another node
			writeJSON(w, r, true)
			return false
		}
		return true
	})
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
