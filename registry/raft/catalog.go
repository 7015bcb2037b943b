package raft

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/pier-dev/pier/registry"
)

// External nodes (Consul's /v1/catalog/register) live in the State as one
// immutable record per node (registry.ExternalNode: the node, its services
// by ID, its checks by ID), copied on write: a change copies one node's
// record, and an unchanged record keeps its pointer, which lets an agent's
// registry skip it when it merges (registry.SetAgreed). Indexes are the
// Raft log's, as Consul's.
//
// Gossip agents are the only writers of their own records (DESIGN.md), and
// an agent's registry never shows an external node that has an agent's
// name. So the leader refuses a registration that names a live agent (a
// 400: the caller passes its registry's IsAgentNode), rather than storing
// records that nobody would see; Consul accepts them, but its agents'
// anti-entropy then deletes them, so the effect for a Consul user is the
// same, only immediate and explained.

// ErrMissingService is Consul's answer to a check on a service the node
// does not have.
var ErrMissingService = errors.New("Missing service registration")

func extLess(a, b *registry.ExternalNode) bool { return a.Node.Name < b.Node.Name }

func extKey(name string) *registry.ExternalNode {
	return &registry.ExternalNode{Node: registry.NodeEntry{Node: registry.Node{Name: name}}}
}

// CatalogIndex is the index of the last change to the external nodes
// (never 0).
func (s *State) CatalogIndex() uint64 { return max(s.catalogIndex, 1) }

// ExternalNode returns one external node with its services and checks.
func (s *State) ExternalNode(name string) (*registry.ExternalNode, bool) {
	return s.ext.Get(extKey(name))
}

// ExternalNodes returns every external node, by name.
func (s *State) ExternalNodes() []*registry.ExternalNode {
	out := make([]*registry.ExternalNode, 0, s.ext.Len())
	s.ext.Ascend(func(e *registry.ExternalNode) bool {
		out = append(out, e)
		return true
	})
	return out
}

func findService(ss []*registry.ServiceEntry, id string) (int, bool) {
	return slices.BinarySearchFunc(ss, id, func(e *registry.ServiceEntry, id string) int { return strings.Compare(e.ID, id) })
}

func findCheck(cs []*registry.CheckEntry, id string) (int, bool) {
	return slices.BinarySearchFunc(cs, id, func(e *registry.CheckEntry, id string) int { return strings.Compare(e.CheckID, id) })
}

func tagsOf(s *registry.ServiceEntry) []string {
	if s.Tags == nil {
		return []string{}
	}
	return s.Tags
}

// register applies a registration as Consul's state store does: the node
// is created or updated, the service replaced, each check created or
// updated; a record that would not change keeps its indexes. A check on a
// service the node does not have fails the whole registration.
func (w *writer) register(req *RegisterRequest) error {
	// The leader validated the request (RegisterExternal). Checking it
	// again here with Validate would make replaying the log depend on the
	// version's rules, and servers of two versions could then disagree:
	// only what the state's shape needs is checked.
	if req == nil || req.Node == "" || req.Service != nil && req.Service.Service == "" {
		return errors.New("raft: a registration without a node or a service name")
	}
	r := req.normalized()
	old, had := w.s.ext.Get(extKey(r.Node))
	en := &registry.ExternalNode{}
	if had {
		*en = *old
	}
	changed := false
	if !had || !r.SkipNodeUpdate {
		n := registry.Node{ID: r.ID, Name: r.Node, Address: r.Address, Datacenter: r.Datacenter, TaggedAddresses: r.TaggedAddresses, Meta: r.NodeMeta}
		if !had || !reflect.DeepEqual(old.Node.Node, n) {
			en.Node = registry.NodeEntry{Node: n, CreateIndex: w.idx, ModifyIndex: w.idx}
			if had {
				en.Node.CreateIndex = old.Node.CreateIndex
			}
			changed = true
		}
	}
	if r.Service != nil {
		s := r.Service.service()
		i, found := findService(en.Services, s.ID)
		if !found || !reflect.DeepEqual(en.Services[i].Service, s) {
			se := &registry.ServiceEntry{Node: r.Node, Service: s, CreateIndex: w.idx, ModifyIndex: w.idx}
			svcs := slices.Clone(en.Services)
			if found {
				se.CreateIndex = svcs[i].CreateIndex
				svcs[i] = se
			} else {
				svcs = slices.Insert(svcs, i, se)
			}
			en.Services = svcs
			en.Checks = retag(en.Checks, se)
			changed = true
		}
	}
	for _, c := range r.Checks {
		chk := registry.Check{CheckID: c.CheckID, Name: c.Name, Status: registry.Status(c.Status), Notes: c.Notes, Output: c.Output, ServiceID: c.ServiceID}
		if chk.ServiceID != "" {
			i, ok := findService(en.Services, chk.ServiceID)
			if !ok {
				return fmt.Errorf("check %q: %w %q", chk.CheckID, ErrMissingService, chk.ServiceID)
			}
			chk.ServiceName, chk.ServiceTags = en.Services[i].Name, tagsOf(en.Services[i])
		}
		i, found := findCheck(en.Checks, chk.CheckID)
		if found && reflect.DeepEqual(en.Checks[i].Check, chk) {
			continue
		}
		ce := &registry.CheckEntry{Node: r.Node, Check: chk, CreateIndex: w.idx, ModifyIndex: w.idx}
		checks := slices.Clone(en.Checks)
		if found {
			ce.CreateIndex = checks[i].CreateIndex
			checks[i] = ce
		} else {
			checks = slices.Insert(checks, i, ce)
		}
		en.Checks = checks
		changed = true
	}
	if changed {
		w.s.ext.ReplaceOrInsert(en)
		w.s.catalogIndex = w.idx
	}
	return nil
}

// retag gives the checks of se's service its current name and tags (they
// show them), keeping their indexes.
func retag(checks []*registry.CheckEntry, se *registry.ServiceEntry) []*registry.CheckEntry {
	var out []*registry.CheckEntry
	for i, c := range checks {
		if c.ServiceID != se.ID || c.ServiceName == se.Name && slices.Equal(c.ServiceTags, tagsOf(se)) {
			continue
		}
		if out == nil {
			out = slices.Clone(checks)
		}
		cc := *c
		cc.ServiceName, cc.ServiceTags = se.Name, tagsOf(se)
		out[i] = &cc
	}
	if out == nil {
		return checks
	}
	return out
}

// deregister removes a service and its checks, a check, or a node and
// everything on it; what does not exist is no error, as in Consul.
func (w *writer) deregister(req *DeregisterRequest) error {
	if req == nil || req.Node == "" {
		return errors.New("raft: a deregistration without a node")
	}
	old, had := w.s.ext.Get(extKey(req.Node))
	if !had {
		return nil
	}
	en := *old
	switch {
	case req.ServiceID != "":
		i, ok := findService(en.Services, req.ServiceID)
		if !ok {
			return nil
		}
		en.Services = slices.Delete(slices.Clone(en.Services), i, i+1)
		en.Checks = slices.DeleteFunc(slices.Clone(en.Checks), func(c *registry.CheckEntry) bool { return c.ServiceID == req.ServiceID })
	case req.CheckID != "":
		i, ok := findCheck(en.Checks, req.CheckID)
		if !ok {
			return nil
		}
		en.Checks = slices.Delete(slices.Clone(en.Checks), i, i+1)
	default:
		w.s.ext.Delete(old)
		w.s.catalogIndex = w.idx
		return nil
	}
	w.s.ext.ReplaceOrInsert(&en)
	w.s.catalogIndex = w.idx
	return nil
}

// RegisterExternal records an external node, and optionally a service and
// checks, through the log; leader only. isAgent (the registry's
// IsAgentNode; nil: none) says whether a name is a gossip agent's, which
// such a registration may not write. A bad request is a
// *registry.FieldError naming the field (the API's 400) and nothing is
// proposed.
func (n *Node) RegisterExternal(req RegisterRequest, isAgent func(node string) bool) (Result, error) {
	if err := req.Validate(); err != nil {
		return Result{}, err
	}
	if isAgent != nil && isAgent(req.Node) {
		return Result{}, fieldErr("Node", "%q is a pier agent, the only writer of its own services and checks: register them through that agent (/v1/agent/service/register)", req.Node)
	}
	// A check on a service that is neither in the request nor on the node
	// would fail in the state machine (a 500): say which field now.
	norm := req.normalized()
	st := n.fsm.State()
	for i, c := range norm.Checks {
		if c.ServiceID == "" || norm.Service != nil && norm.Service.ID == c.ServiceID {
			continue
		}
		if en, ok := st.ExternalNode(req.Node); ok {
			if _, ok := findService(en.Services, c.ServiceID); ok {
				continue
			}
		}
		return Result{}, fieldErr(fmt.Sprintf("Checks[%d].ServiceID", i), "%v %q on node %q", ErrMissingService, c.ServiceID, req.Node)
	}
	r, err := n.apply(command{Type: cmdCatalogRegister, Register: &norm})
	r.OK = err == nil && r.Err == nil
	return r, err
}

// DeregisterExternal removes an external node, service or check through
// the log; leader only. A gossip agent's name is refused (its records are
// its own: its agent deregisters them, or `pier leave`), unless the
// servers hold an external node of that name from before the agent
// joined, which this removes.
func (n *Node) DeregisterExternal(req DeregisterRequest, isAgent func(node string) bool) (Result, error) {
	if err := req.Validate(); err != nil {
		return Result{}, err
	}
	if isAgent != nil && isAgent(req.Node) {
		if _, ok := n.fsm.State().ExternalNode(req.Node); !ok {
			return Result{}, fieldErr("Node", "%q is a pier agent, the only writer of its own services and checks: deregister them through that agent (/v1/agent/service/deregister)", req.Node)
		}
	}
	r, err := n.apply(command{Type: cmdCatalogDeregister, Deregister: &req})
	r.OK = err == nil && r.Err == nil
	return r, err
}
