package api

import (
	"net"
	"net/http"
	"slices"
	"strconv"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
)

// hasTags reports whether the service carries every tag asked for; Consul
// ANDs repeated ?tag= parameters.
func hasTags(e *registry.ServiceEntry, tags []string) bool {
	for _, t := range tags {
		if !slices.Contains(e.Tags, t) {
			return false
		}
	}
	return true
}

func hasMeta(n *registry.NodeEntry, meta map[string]string) bool {
	for k, v := range meta {
		if got, ok := n.Meta[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (s *Server) catalogServices(w http.ResponseWriter, r *http.Request) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	// The names and tags come from the services table; node meta and
	// filters read the nodes too.
	idx := servicesIndex
	if q.filter != nil || q.nodeMeta != nil {
		idx = nodeServicesIndex
	}
	snap := s.block(w, r, q, catalogView(idx))
	out := map[string][]string{}
	if q.filter != nil {
		// Consul evaluates the filter on each instance (its catalog shape)
		// and lists the names and tags of those that match.
		var all []catalogService
		for _, n := range snap.Nodes() {
			if !hasMeta(n, q.nodeMeta) {
				continue
			}
			for _, e := range snap.NodeServices(n.Name) {
				all = append(all, toCatalogService(n, e))
			}
		}
		if all, ok = filtered(w, q.filter, all); !ok {
			return
		}
		for _, c := range all {
			out[c.ServiceName] = append(orEmpty(out[c.ServiceName]), c.ServiceTags...)
		}
		for k, v := range out {
			slices.Sort(v)
			out[k] = slices.Compact(v)
		}
	} else if q.nodeMeta == nil {
		for _, nt := range snap.ServiceNames() {
			out[nt.Name] = nt.Tags
		}
	} else {
		for _, n := range snap.Nodes() {
			if !hasMeta(n, q.nodeMeta) {
				continue
			}
			for _, e := range snap.NodeServices(n.Name) {
				out[e.Name] = append(orEmpty(out[e.Name]), e.Tags...)
			}
		}
		for k, v := range out {
			slices.Sort(v)
			out[k] = slices.Compact(v)
		}
	}
	for k := range out {
		if !acl.MayReadService(r, k) {
			delete(out, k)
		}
	}
	writeJSON(w, r, out)
}

func (s *Server) catalogService(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	snap := s.block(w, r, q, serviceView(name))
	out := []catalogService{}
	for _, in := range snap.ServiceInstances(name) {
		if hasTags(in.Service, q.tags) && hasMeta(in.Node, q.nodeMeta) {
			out = append(out, toCatalogService(in.Node, in.Service))
		}
	}
	if out, ok = filtered(w, q.filter, out); ok {
		sortNear(s, r, out, func(c *catalogService) string { return c.Node })
		writeJSON(w, r, out)
	}
}

func (s *Server) catalogNodes(w http.ResponseWriter, r *http.Request) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	snap := s.block(w, r, q, catalogView(nodesIndex))
	out := []node{}
	for _, n := range snap.Nodes() {
		if hasMeta(n, q.nodeMeta) {
			out = append(out, toNode(n))
		}
	}
	if out, ok = filtered(w, q.filter, out); ok {
		sortNear(s, r, out, func(n *node) string { return n.Node })
		writeJSON(w, r, out)
	}
}

// catalogNode answers null for an unknown node, as Consul does (its client
// then returns a nil result rather than an error).
func (s *Server) catalogNode(w http.ResponseWriter, r *http.Request) {
	q, n, svcs, ok := s.readNode(w, r)
	if !ok {
		return
	}
	out := nodeServices{Node: n, Services: map[string]agentService{}}
	for _, sv := range svcs {
		out.Services[sv.ID] = sv
	}
	// Consul filters the node's services.
	if filteredMap(w, q.filter, out.Services) {
		writeJSON(w, r, out)
	}
}

// statusLeader names this agent: every pier agent serves the catalog
// itself, and clients only check that a leader exists.
func (s *Server) statusLeader(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	if s.cfg.Consensus != nil {
		s.raftStatusLeader(w, r)
		return
	}
	writeJSON(w, r, s.leader())
}

func (s *Server) statusPeers(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	if s.cfg.Consensus != nil {
		s.raftStatusPeers(w, r)
		return
	}
	writeJSON(w, r, []string{s.leader()})
}

func (s *Server) leader() string {
	cfg := s.reg.Config()
	return net.JoinHostPort(cfg.Address, strconv.Itoa(cfg.AgentPort))
}

// catalogNodeServiceList is Consul's /v1/catalog/node-services/:node (the
// consul/api client's Catalog().NodeServiceList): /v1/catalog/node's
// answer with the services as a list.
func (s *Server) catalogNodeServiceList(w http.ResponseWriter, r *http.Request) {
	q, n, svcs, ok := s.readNode(w, r)
	if !ok {
		return
	}
	out := struct {
		Node     node
		Services []agentService
	}{Node: n, Services: svcs}
	if out.Services, ok = filtered(w, q.filter, out.Services); ok {
		writeJSON(w, r, out)
	}
}

// readNode reads the node of a /v1/catalog/node* request and its services
// that the token may read, as Consul filters them by service:read. false
// means an answer was sent: an error, or null for an unknown node.
func (s *Server) readNode(w http.ResponseWriter, r *http.Request) (query, node, []agentService, bool) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return q, node{}, nil, false
	}
	snap := s.block(w, r, q, catalogView(nodeServicesIndex))
	n, found := snap.Node(r.PathValue("node"))
	if !found {
		writeJSON(w, r, nil)
		return q, node{}, nil, false
	}
	dc := s.reg.Config().Datacenter
	svcs := []agentService{}
	for _, e := range snap.NodeServices(n.Name) {
		if acl.MayReadService(r, e.Name) {
			svcs = append(svcs, toCatalogNodeService(e, dc))
		}
	}
	return q, toNode(n), svcs, true
}
