package api

import (
	"net/http"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
)

func (s *Server) healthService(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	snap := s.block(w, r, q, serviceView(name))
	dc := s.reg.Config().Datacenter
	out := []serviceEntry{}
	for _, in := range snap.ServiceInstances(name) {
		if !hasTags(in.Service, q.tags) || !hasMeta(in.Node, q.nodeMeta) {
			continue
		}
		// ?passing drops instances with any check not passing, warning
		// included, as Consul does.
		if q.passing && in.Status() != registry.StatusPassing {
			continue
		}
		out = append(out, serviceEntry{
			Node:    toNode(in.Node),
			Service: toCatalogNodeService(in.Service, dc),
			Checks:  toHealthChecks(in.Checks),
		})
	}
	if out, ok = filtered(w, q.filter, out); ok {
		sortNear(s, r, out, func(e *serviceEntry) string { return e.Node.Node })
		writeJSON(w, r, out)
	}
}

func (s *Server) healthChecks(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	snap := s.block(w, r, q, serviceView(name))
	out := []healthCheck{}
	for _, in := range snap.ServiceInstances(name) {
		if !hasMeta(in.Node, q.nodeMeta) {
			continue
		}
		for _, c := range snap.NodeChecks(in.Node.Name, in.Service.ID) {
			out = append(out, toHealthCheck(c))
		}
	}
	if out, ok = filtered(w, q.filter, out); ok {
		writeJSON(w, r, out)
	}
}

func (s *Server) healthNode(w http.ResponseWriter, r *http.Request) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	snap := s.block(w, r, q, catalogView(checksIndex))
	var checks []*registry.CheckEntry
	for _, c := range snap.AllNodeChecks(r.PathValue("node")) {
		if c.ServiceID == "" || acl.MayReadService(r, c.ServiceName) { // as Consul filters by service:read
			checks = append(checks, c)
		}
	}
	if out, ok := filtered(w, q.filter, toHealthChecks(checks)); ok {
		writeJSON(w, r, out)
	}
}

func (s *Server) healthState(w http.ResponseWriter, r *http.Request) {
	state := r.PathValue("state")
	switch state {
	case "any", "passing", "warning", "critical":
	default:
		httpError(w, http.StatusBadRequest, "state: %q is not one of any, passing, warning, critical", state)
		return
	}
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	idx := checksIndex
	if q.nodeMeta != nil {
		idx = nodeChecksIndex
	}
	snap := s.block(w, r, q, catalogView(idx))
	out := []healthCheck{}
	snap.Checks(func(c *registry.CheckEntry) bool {
		if (state == "any" || string(c.Status) == state) && (c.ServiceID == "" || acl.MayReadService(r, c.ServiceName)) {
			out = append(out, toHealthCheck(c))
		}
		return true
	})
	if out, ok = filtered(w, q.filter, out); ok {
		writeJSON(w, r, out)
	}
}
