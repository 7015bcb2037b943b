package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// Consul's /v1/catalog/register and /deregister, which tools such as
// consul-esm and Terraform use for nodes that run no agent ("external"
// nodes). They are writes of the agreed state (registry/raft/catalog.go):
// the leader applies them, every agent's registry shows them through the
// mirror. A gossip agent's node is refused: that agent is the only writer
// of its own records.

func (s *Server) catalogRegisterRoutes() {
	// The permission depends on the body and on what the node holds now,
	// so it is checked in the handler, where the request is served.
	s.raftWrites("/v1/catalog/register", s.catalogRegister, acl.Anyone)
	s.raftWrites("/v1/catalog/deregister", s.catalogDeregister, acl.Anyone)
}

// connectFields are the Connect parts of Consul's NodeService, which pier
// refuses in a registration as it does on /v1/agent/service/register.
type connectFields struct {
	Service *struct {
		Kind    string
		Proxy   json.RawMessage
		Connect *struct {
			Native         bool
			SidecarService json.RawMessage
		}
	}
}

// decodeRegister reads a register body as Consul does (field names match
// without regard to case, unknown fields are ignored) and validates it;
// the error names the field (a 400). An empty Datacenter is dc's.
func decodeRegister(body []byte, dc string) (raft.RegisterRequest, error) {
	var req raft.RegisterRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return req, &registry.FieldError{Msg: "Request decode failed: " + err.Error()}
	}
	var cf connectFields
	if json.Unmarshal(body, &cf) == nil && cf.Service != nil {
		switch c := cf.Service; {
		case c.Kind != "":
			return req, &registry.FieldError{Field: "Service.Kind", Msg: "service kind " + c.Kind + " is not supported (Consul Connect is not part of pier)"}
		case len(c.Proxy) > 0 && !bytes.Equal(c.Proxy, []byte("null")):
			return req, &registry.FieldError{Field: "Service.Proxy", Msg: "proxies are not supported (Consul Connect is not part of pier)"}
		case c.Connect != nil && c.Connect.Native:
			return req, &registry.FieldError{Field: "Service.Connect.Native", Msg: "Connect-native services are not supported (Consul Connect is not part of pier)"}
		case c.Connect != nil && len(c.Connect.SidecarService) > 0 && !bytes.Equal(c.Connect.SidecarService, []byte("null")):
			return req, &registry.FieldError{Field: "Service.Connect.SidecarService", Msg: "sidecar services are not supported (Consul Connect is not part of pier)"}
		}
	}
	// The consul/api client always sends Weights, {0, 0} when the caller
	// set none; Consul then stores its default weights, and so does pier.
	if sv := req.Service; sv != nil && sv.Weights != nil && *sv.Weights == (registry.Weights{}) {
		sv.Weights = nil
	}
	if req.Datacenter == "" {
		req.Datacenter = dc
	}
	return req, req.Validate()
}

// decodeDeregister is decodeRegister for a deregistration.
func decodeDeregister(body []byte, dc string) (raft.DeregisterRequest, error) {
	var req raft.DeregisterRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return req, &registry.FieldError{Msg: "Request decode failed: " + err.Error()}
	}
	if req.Datacenter == "" {
		req.Datacenter = dc
	}
	return req, req.Validate()
}

// catalogBody reads the body, decodes it with decode (a bad one is a 400
// here, before any hop to the leader) and puts it back for the handler
// that serves it, here or on the leader; false means an answer was sent.
func catalogBody[T any](s *Server, w http.ResponseWriter, r *http.Request, decode func([]byte, string) (T, error)) (T, bool) {
	var req T
	body, ok := s.readBody(w, r)
	if !ok {
		return req, false
	}
	dc := s.reg.Config().Datacenter
	req, err := decode(body, dc)
	if err != nil {
		writeError(w, "Invalid catalog request", err)
		return req, false
	}
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	return req, true
}

// datacenterOf answers 500 No path to datacenter for a request of another
// datacenter (in its body or ?dc=), as Consul without WAN federation.
func (s *Server) datacenterOf(w http.ResponseWriter, r *http.Request, dc string) bool {
	if !s.localDC(w, r) {
		return false
	}
	if own := s.reg.Config().Datacenter; dc != own {
		httpError(w, http.StatusInternalServerError, "No path to datacenter %q", dc)
		return false
	}
	return true
}

func (s *Server) catalogRegister(w http.ResponseWriter, r *http.Request) {
	req, ok := catalogBody(s, w, r, decodeRegister)
	if !ok || !s.datacenterOf(w, r, req.Datacenter) {
		return
	}
	n, ok := s.raftWrite(w, r)
	if !ok {
		return
	}
	if p := acl.PolicyOf(r); p != nil && !mayRegisterExternal(p, n.State(), &req) {
		acl.Denied(w)
		return
	}
	s.catalogApply(w, r)(n.RegisterExternal(req, s.reg.IsAgentNode))
}

func (s *Server) catalogDeregister(w http.ResponseWriter, r *http.Request) {
	req, ok := catalogBody(s, w, r, decodeDeregister)
	if !ok || !s.datacenterOf(w, r, req.Datacenter) {
		return
	}
	n, ok := s.raftWrite(w, r)
	if !ok {
		return
	}
	if p := acl.PolicyOf(r); p != nil {
		if ok, err := mayDeregisterExternal(p, n.State(), &req); err != nil {
			writeError(w, "Invalid catalog request", err)
			return
		} else if !ok {
			acl.Denied(w)
			return
		}
	}
	s.catalogApply(w, r)(n.DeregisterExternal(req, s.reg.IsAgentNode))
}

// catalogApply answers the outcome of a register or deregister: true, or
// the error (a *registry.FieldError is the caller's, a 400).
func (s *Server) catalogApply(w http.ResponseWriter, r *http.Request) func(raft.Result, error) {
	return func(res raft.Result, err error) {
		if err == nil {
			err = res.Err
		}
		if err == nil {
			writeJSON(w, r, true)
			return
		}
		var fe *registry.FieldError
		if errors.As(err, &fe) {
			writeError(w, "Invalid catalog request", err)
			return
		}
		raftError(w, err)
	}
}

// mayRegisterExternal is Consul's rule: node:write when the registration
// creates or changes the node, service:write on the service registered and
// on the one of that ID it replaces, and for each check node:write (a node
// check) or service:write on its service.
func mayRegisterExternal(p *acl.Policy, st *raft.State, req *raft.RegisterRequest) bool {
	en, had := st.ExternalNode(req.Node)
	if !had || changesNode(en, req) {
		if !p.NodeWrite(req.Node) {
			return false
		}
	}
	serviceID := ""
	if sv := req.Service; sv != nil {
		serviceID = sv.ID
		if serviceID == "" {
			serviceID = sv.Service
		}
		if !p.ServiceWrite(sv.Service) {
			return false
		}
		if had {
			if old := externalService(en, serviceID); old != nil && !p.ServiceWrite(old.Name) {
				return false
			}
		}
	}
	checks := req.Checks
	if req.Check != nil {
		checks = append([]*raft.RegisterCheck{req.Check}, checks...)
	}
	for _, c := range checks {
		switch {
		case c == nil || c.ServiceID == serviceID && serviceID != "":
			// a check of the service above, already vetted
		case c.ServiceID == "":
			if !p.NodeWrite(req.Node) {
				return false
			}
		default:
			// A check on a service the node does not have fails later
			// with a 400 that names it; the token needs write on every
			// service to learn that.
			name := "\x00"
			if had {
				if old := externalService(en, c.ServiceID); old != nil {
					name = old.Name
				}
			}
			if !p.ServiceWrite(name) {
				return false
			}
		}
	}
	return true
}

// changesNode is Consul's RegisterRequest.ChangesNode over pier's record.
func changesNode(en *registry.ExternalNode, req *raft.RegisterRequest) bool {
	if req.SkipNodeUpdate {
		return false
	}
	old := en.Node.Node
	return old.ID != req.ID || old.Address != req.Address || old.Datacenter != req.Datacenter ||
		!sameMap(old.TaggedAddresses, req.TaggedAddresses) || !sameMap(old.Meta, req.NodeMeta)
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func externalService(en *registry.ExternalNode, id string) *registry.ServiceEntry {
	for _, e := range en.Services {
		if e.ID == id {
			return e
		}
	}
	return nil
}

// mayDeregisterExternal is Consul's rule: node:write on the node allows
// everything; without it, service:write on the service removed, or on the
// check's service (node:write for a node check). Without node:write, a
// service or check that does not exist is an error that names it (a 400),
// as Consul's.
func mayDeregisterExternal(p *acl.Policy, st *raft.State, req *raft.DeregisterRequest) (bool, error) {
	if p.NodeWrite(req.Node) {
		return true, nil
	}
	en, had := st.ExternalNode(req.Node)
	switch {
	case req.ServiceID != "":
		var sv *registry.ServiceEntry
		if had {
			sv = externalService(en, req.ServiceID)
		}
		if sv == nil {
			return false, &registry.FieldError{Field: "ServiceID", Msg: "Unknown service ID '" + req.ServiceID + "'"}
		}
		return p.ServiceWrite(sv.Name), nil
	case req.CheckID != "":
		if had {
			for _, c := range en.Checks {
				if c.CheckID == req.CheckID {
					return c.ServiceID != "" && p.ServiceWrite(c.ServiceName), nil
				}
			}
		}
		return false, &registry.FieldError{Field: "CheckID", Msg: "Unknown check ID '" + req.CheckID + "'"}
	}
	return false, nil
}
