package acl

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sync"
)

// Roles and identities, as Consul's: a role is a named set of policies and
// identities that tokens link to, so that changing the role changes every
// token that has it. A service identity grants what a service instance
// needs (write on the service and its sidecar's name, read on every
// service and node); a node identity what an agent needs (write on its
// node, read on every service). Roles live in the KV store beside the
// policies (store.go) and resolve at table build time, so a request
// never looks a role up.

// identityNameRE is compiled at its first use, not at every agent's start
// (most never check an identity).
var identityNameRE = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$`)
})

const maxIdentityName = 256

// serviceIdentity is Consul's ACLServiceIdentity; no Datacenters means all.
type serviceIdentity struct {
	ServiceName string
	Datacenters []string `json:",omitempty"`
}

// nodeIdentity is Consul's ACLNodeIdentity; it applies in its datacenter
// only.
type nodeIdentity struct {
	NodeName   string
	Datacenter string
}

// grant is what a token or a role is given. Links are stored by ID only, so
// a renamed policy or role keeps its tokens.
type grant struct {
	Policies          []string          `json:",omitempty"`
	Roles             []string          `json:",omitempty"` // tokens only
	ServiceIdentities []serviceIdentity `json:",omitempty"`
	NodeIdentities    []nodeIdentity    `json:",omitempty"`
}

type storedRole struct {
	ID          string
	Name        string
	Description string
	grant
}

// aclRoleView is Consul's ACLRole.
type aclRoleView struct {
	ID                string
	Name              string
	Description       string
	Policies          []aclLink         `json:",omitempty"`
	ServiceIdentities []serviceIdentity `json:",omitempty"`
	NodeIdentities    []nodeIdentity    `json:",omitempty"`
	Hash              []byte
	CreateIndex       uint64
	ModifyIndex       uint64
}

type roleEntry struct {
	view       aclRoleView
	rules      ruleSet
	management bool
}

// identityRules compiles the rules an identity stands for. The names were
// checked against identityNameRE, so they cannot break out of the quotes.
func identityRules(format, name string) *ruleSet {
	r, err := ParseRules(fmt.Sprintf(format, name))
	if err != nil {
		panic("acl: identity template: " + err.Error()) // a bug in the templates below
	}
	rs, _ := compileRules(r)
	return rs
}

const (
	serviceIdentityRules = `service "%[1]s" { policy = "write" }
service "%[1]s-sidecar-proxy" { policy = "write" }
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`
	nodeIdentityRules = `node "%[1]s" { policy = "write" }
service_prefix "" { policy = "read" }`
)

// resolved is a grant turned into rules and the links shown for it.
type resolved struct {
	rules      ruleSet
	management bool
	policies   []aclLink
	roles      []aclLink
}

// resolve applies a grant in datacenter dc: links to objects that are gone
// are dropped (as Consul does), and a policy or identity limited to other
// datacenters still shows but grants nothing here.
func (t *aclTable) resolve(g grant, dc string) resolved {
	var out resolved
	for _, id := range g.Policies {
		pe, ok := t.policies[id]
		if !ok {
			continue
		}
		out.policies = append(out.policies, aclLink{ID: id, Name: pe.view.Name})
		switch {
		case len(pe.view.Datacenters) > 0 && !slices.Contains(pe.view.Datacenters, dc):
		case pe.builtin:
			out.management = true
		default:
			out.rules.merge(pe.rules)
		}
	}
	for _, id := range g.Roles {
		re, ok := t.roles[id]
		if !ok {
			continue
		}
		out.roles = append(out.roles, aclLink{ID: id, Name: re.view.Name})
		out.management = out.management || re.management
		out.rules.merge(&re.rules)
	}
	for _, si := range g.ServiceIdentities {
		if len(si.Datacenters) == 0 || slices.Contains(si.Datacenters, dc) {
			out.rules.merge(identityRules(serviceIdentityRules, si.ServiceName))
		}
	}
	for _, ni := range g.NodeIdentities {
		if ni.Datacenter == dc {
			out.rules.merge(identityRules(nodeIdentityRules, ni.NodeName))
		}
	}
	return out
}

// aclGrantIn is the part of a token or role body that names what it gets.
type aclGrantIn struct {
	Policies          []*aclLink
	ServiceIdentities []*serviceIdentity
	NodeIdentities    []*nodeIdentity
}

// check validates the links and identities of a body and answers the grant
// to store; a message on error. what is "role" or "token", for messages.
func (t *aclTable) check(in aclGrantIn, what string) (grant, string) {
	var g grant
	ids, msg := t.policyIDs(in.Policies)
	if msg != "" {
		return g, msg
	}
	g.Policies = ids
	for _, si := range in.ServiceIdentities {
		switch {
		case si == nil || si.ServiceName == "":
			return g, "Service identity is missing the service name field on this " + what
		case len(si.ServiceName) > maxIdentityName || !identityNameRE().MatchString(si.ServiceName):
			return g, fmt.Sprintf("Service identity %q has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed", si.ServiceName)
		}
		if !slices.ContainsFunc(g.ServiceIdentities, func(o serviceIdentity) bool { return o.ServiceName == si.ServiceName }) {
			g.ServiceIdentities = append(g.ServiceIdentities, *si)
		}
	}
	for _, ni := range in.NodeIdentities {
		switch {
		case ni == nil || ni.NodeName == "":
			return g, "Node identity is missing the node name field on this " + what
		case ni.Datacenter == "":
			return g, "Node identity is missing the datacenter field on this " + what
		case len(ni.NodeName) > maxIdentityName || !identityNameRE().MatchString(ni.NodeName):
			return g, fmt.Sprintf("Node identity %q has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed", ni.NodeName)
		}
		if !slices.Contains(g.NodeIdentities, *ni) {
			g.NodeIdentities = append(g.NodeIdentities, *ni)
		}
	}
	return g, ""
}

// roleIDs resolves a token's role links, by ID or else by name.
func (t *aclTable) roleIDs(links []*aclLink) ([]string, string) {
	var ids []string
	for _, l := range links {
		if l == nil || l.ID == "" && l.Name == "" {
			return nil, "a role link needs an ID or a Name"
		}
		re, ok := t.roleByRef(*l)
		if !ok {
			return nil, "cannot find role " + l.ID + l.Name
		}
		if !slices.Contains(ids, re.view.ID) {
			ids = append(ids, re.view.ID)
		}
	}
	return ids, ""
}

func (t *aclTable) roleByRef(l aclLink) (*roleEntry, bool) {
	return byRef(t.roles, t.rolesByName, l)
}

func (t *aclTable) sortedRoles() []*roleEntry {
	return sortedByName(t.roles, func(re *roleEntry) (string, string) { return re.view.Name, re.view.ID })
}

type aclRoleIn struct {
	ID          string
	Name        string
	Description string
	aclGrantIn
	TemplatedPolicies []any
}

// aclRolePut creates (no ID in the path) or updates a role.
func (s *Endpoints) aclRolePut(w http.ResponseWriter, r *http.Request) {
	var in aclRoleIn
	if id, create, ok := s.decodeWrite(w, r, &in, &in.ID, "Role"); ok {
		s.aclRoleWrite(w, r, in, id, create)
	}
}

func (s *Endpoints) aclRoleWrite(w http.ResponseWriter, r *http.Request, in aclRoleIn, id string, create bool) {
	switch {
	case in.Name == "":
		httpError(w, http.StatusBadRequest, "Invalid Role: no Name is set")
		return
	case !validName(in.Name, 256):
		httpError(w, http.StatusBadRequest, "Invalid Role: invalid Name %q: 1 to 256 letters, digits, - and _", in.Name)
		return
	case len(in.TemplatedPolicies) > 0:
		httpError(w, http.StatusBadRequest, "Invalid Role: pier does not support TemplatedPolicies")
		return
	}
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.syncLocked()
	if _, ok := t.roles[id]; !ok && !create {
		httpError(w, http.StatusNotFound, "Cannot find role %q", id)
		return
	}
	if o, ok := t.rolesByName[in.Name]; ok && o.view.ID != id {
		httpError(w, http.StatusBadRequest, "Invalid Role: A Role with Name %q already exists", in.Name)
		return
	}
	g, msg := t.check(in.aclGrantIn, "role")
	if msg != "" {
		httpError(w, http.StatusBadRequest, "Invalid Role: %s", msg)
		return
	}
	s.putAndShow(w, r, "Role", aclRolePrefix+id, storedRole{ID: id, Name: in.Name, Description: in.Description, grant: g},
		func(t *aclTable) any {
			if re := t.roles[id]; re != nil {
				return re.view
			}
			return nil
		})
}

// aclRoleRead answers a role by the ID or the name in the path.
func (s *Endpoints) aclRoleRead(w http.ResponseWriter, r *http.Request) {
	readRef(s, w, r, "role", "Requested role does not exist", (*aclTable).roleByRef,
		func(re *roleEntry) any { return re.view })
}

// aclRoleDelete answers 404 for an unknown role, as Consul; tokens that
// link to a deleted role lose the link when the table is rebuilt.
func (s *Endpoints) aclRoleDelete(w http.ResponseWriter, r *http.Request) {
	s.deleteObject(w, r, "Role", aclRolePrefix, func(t *aclTable, id string) bool {
		if _, ok := t.roles[id]; !ok {
			httpError(w, http.StatusNotFound, "Cannot find role to delete")
			return false
		}
		return true
	})
}

func (s *Endpoints) aclRoleList(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	policy := r.URL.Query().Get("policy")
	out := []aclRoleView{}
	for _, re := range s.acl.current().sortedRoles() {
		if policy != "" && !linksTo(re.view.Policies, policy) {
			continue
		}
		out = append(out, re.view)
	}
	writeJSON(w, r, out)
}
