package api

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
)

func (s *Server) serviceRegister(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	def, err := registry.DecodeService(body, false)
	if err != nil {
		writeError(w, "Invalid service registration", err)
		return
	}
	svc, checks, err := def.Build()
	if err == nil {
		err = s.refuseServiceScripts(def)
	}
	if err != nil {
		writeError(w, "Invalid service registration", err)
		return
	}
	for i := range checks {
		s.keepCheckState(&checks[i])
	}
	if err := s.reg.RegisterService(svc, checks, registry.SourceAPI); err != nil {
		writeError(w, "Invalid service registration", err)
		return
	}
	s.log.Info("service registered", "id", svc.ID, "name", svc.Name)
}

func (s *Server) serviceDeregister(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.reg.DeregisterService(id); err != nil {
		writeError(w, "Deregister", err)
		return
	}
	s.log.Info("service deregistered", "id", id)
}

func (s *Server) checkRegister(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	def, err := registry.DecodeCheck(body, false)
	if err != nil {
		writeError(w, "Invalid check registration", err)
		return
	}
	c, err := def.BuildCheck()
	if err == nil {
		err = s.refuseScripts("", def)
	}
	if err != nil {
		writeError(w, "Invalid check registration", err)
		return
	}
	s.keepCheckState(&c)
	if err := s.reg.RegisterCheck(c, registry.SourceAPI); err != nil {
		writeError(w, "Invalid check registration", err)
		return
	}
	s.log.Info("check registered", "id", c.CheckID, "service", c.ServiceID)
}

func (s *Server) checkDeregister(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.reg.DeregisterCheck(id); err != nil {
		writeError(w, "Deregister", err)
		return
	}
	s.log.Info("check deregistered", "id", id)
}

func (s *Server) self() string { return s.reg.Config().NodeName }

func (s *Server) agentServices(w http.ResponseWriter, r *http.Request) {
	f, ok := parseFilter(w, r)
	if !ok {
		return
	}
	snap := s.reg.Snapshot()
	dc := s.reg.Config().Datacenter
	out := map[string]agentService{}
	for _, e := range snap.NodeServices(s.self()) {
		if !acl.MayReadService(r, e.Name) {
			continue
		}
		out[e.ID] = toAgentService(e, dc)
	}
	if filteredMap(w, f, out) {
		writeJSON(w, r, out)
	}
}

// agentService answers one local service with its ContentHash, and blocks
// on ?hash= the way Consul's agent does for this endpoint.
func (s *Server) agentService(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// The write endpoints under /v1/agent/service/ share this GET pattern's
	// path space: a GET on them is a wrong method, not an unknown service.
	for _, wp := range []string{"register", "deregister/", "maintenance/"} {
		if id == wp || strings.HasSuffix(wp, "/") && strings.HasPrefix(id, wp) {
			w.Header().Set("Allow", "PUT, POST")
			httpError(w, http.StatusMethodNotAllowed, "Method Not Allowed")
			return
		}
	}
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	want := r.URL.Query().Get("hash")
	dc := s.reg.Config().Datacenter
	snap := s.reg.Snapshot()
	timer := time.NewTimer(q.wait)
	defer timer.Stop()
	if want != "" {
		s.met.blockStart()
		defer s.met.blockEnd()
	}
	for {
		e, found := snap.NodeService(s.self(), id)
		if !found {
			httpError(w, http.StatusNotFound, "unknown service ID: %s", id)
			return
		}
		svc := toAgentService(e, dc)
		svc.ContentHash = contentHash(svc)
		if want == "" || want != svc.ContentHash {
			w.Header().Set("X-Consul-ContentHash", svc.ContentHash)
			writeJSON(w, r, svc)
			return
		}
		select {
		case <-snap.CatalogChanged(): // a KV write changes no service
			snap = s.reg.Snapshot()
		case <-timer.C:
			want = ""
		case <-r.Context().Done():
			return
		}
	}
}

func contentHash(v agentService) string {
	b, _ := json.Marshal(v)
	h := fnv.New64a()
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 16)
}

func (s *Server) agentChecks(w http.ResponseWriter, r *http.Request) {
	f, ok := parseFilter(w, r)
	if !ok {
		return
	}
	snap := s.reg.Snapshot()
	out := map[string]healthCheck{}
	for _, c := range snap.AllNodeChecks(s.self()) {
		// serfHealth is the cluster's view of this node, kept in the
		// catalog; a Consul agent's local checks never hold it.
		if c.CheckID == registry.SerfCheckID && c.ServiceID == "" {
			continue
		}
		if c.ServiceID != "" && !acl.MayReadService(r, c.ServiceName) {
			continue
		}
		out[c.CheckID] = toHealthCheck(c)
	}
	if filteredMap(w, f, out) {
		writeJSON(w, r, out)
	}
}

func (s *Server) members() []registry.Member {
	if s.cfg.Cluster != nil {
		return s.cfg.Cluster.Members()
	}
	cfg := s.reg.Config()
	self := s.reg.Self()
	return []registry.Member{{
		Name:   self.Name,
		Addr:   self.Address,
		Port:   cfg.AgentPort,
		Tags:   map[string]string{"dc": cfg.Datacenter, "id": self.ID, "role": "node", "build": s.cfg.Version},
		Status: registry.MemberAlive,
	}}
}

// memberTags are the tags every Consul agent carries that pier's nodes
// share, so consul members shows a protocol and a segment: Consul's
// protocol numbers (vsn 2, from 2 to 3), no network segments. They are
// added here rather than gossiped: they are the same on every pier node,
// and memberlist's node meta is kept small (it slows joins).
var memberTags = map[string]string{"vsn": "2", "vsn_min": "2", "vsn_max": "3", "segment": ""}

func toMember(m registry.Member) member {
	tags := maps.Clone(mapOrEmpty(m.Tags))
	for k, v := range memberTags {
		if _, ok := tags[k]; !ok {
			tags[k] = v
		}
	}
	// Protocol numbers as a current Consul agent reports them; clients only
	// display them.
	return member{
		Name: m.Name, Addr: m.Addr, Port: m.Port, Tags: tags, Status: int(m.Status),
		ProtocolMin: 1, ProtocolMax: 5, ProtocolCur: 2, DelegateMin: 2, DelegateMax: 5, DelegateCur: 4,
	}
}

func (s *Server) agentJoin(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Cluster == nil {
		httpError(w, http.StatusNotImplemented, "this agent runs without a cluster")
		return
	}
	addr := r.PathValue("addr")
	if wanQuery(r) {
		s.joinWAN(w, addr)
		return
	}
	if _, err := s.cfg.Cluster.Join([]string{addr}); err != nil {
		httpError(w, http.StatusInternalServerError, "join %s: %v", addr, err)
		return
	}
	s.log.Info("joined", "addr", addr)
}

// wanQuery reads ?wan as Consul does: any value but none (?wan=0 too).
func wanQuery(r *http.Request) bool { return r.URL.Query().Get("wan") != "" }

func (s *Server) agentLeave(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Cluster == nil {
		httpError(w, http.StatusNotImplemented, "this agent runs without a cluster")
		return
	}
	if err := s.cfg.Cluster.Leave(); err != nil {
		httpError(w, http.StatusInternalServerError, "leave: %v", err)
	}
}

func (s *Server) agentForceLeave(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Cluster == nil {
		httpError(w, http.StatusNotImplemented, "this agent runs without a cluster")
		return
	}
	node := r.PathValue("node")
	_, prune := r.URL.Query()["prune"]
	st := registry.MemberNone
	for _, m := range s.cfg.Cluster.Members() {
		if m.Name == node {
			st = m.Status
		}
	}
	var err error
	switch {
	case st == registry.MemberNone:
		err = fmt.Errorf("agent: no node found with name %q: %w", node, registry.ErrNotFound)
	case node == s.self():
		// As in Consul: the agent refutes a leave of itself.
	case prune:
		err = s.cfg.Cluster.Prune(node)
	default:
		// A live member that answers a ping stays, as a Consul node
		// refutes the leave; one that does not answer goes (gossip).
		err = s.cfg.Cluster.ForceLeave(node)
	}
	if err != nil {
		writeError(w, "force-leave", err)
		return
	}
	s.log.Info("force-leave", "node", node, "prune", prune, "status", st.String())
}

func (s *Server) agentMembers(w http.ResponseWriter, r *http.Request) {
	ms := s.members()
	if wanQuery(r) {
		ms = s.wanMembers()
	}
	out := make([]member, 0, len(ms))
	for _, m := range ms {
		out = append(out, toMember(m))
	}
	writeJSON(w, r, out)
}

// agentVersion is Consul's /v1/agent/version (the consul/api client's
// Agent().Version()).
func (s *Server) agentVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, r, map[string]any{"SHA": "", "BuildDate": "", "HumanVersion": s.cfg.Version, "FIPS": ""})
}

func (s *Server) agentSelf(w http.ResponseWriter, r *http.Request) {
	cfg := s.reg.Config()
	self := s.reg.Self()
	var me member
	for _, m := range s.members() {
		if m.Name == self.Name {
			me = toMember(m)
		}
	}
	// consul/api decodes /v1/agent/self as map[string]map[string]any, so
	// every top-level value must be an object or null.
	out := map[string]any{
		"Config": map[string]any{
			"Datacenter":        cfg.Datacenter,
			"PrimaryDatacenter": cfg.Datacenter,
			"NodeName":          cfg.NodeName,
			"NodeID":            cfg.NodeID,
			"Server":            s.isServer(),
			"Revision":          "",
			"Version":           s.cfg.Version,
			"Product":           "pier",
		},
		"DebugConfig": s.debugConfig(),
		"Member":      me,
		"Meta":        mapOrEmpty(self.Meta),
		"Coord":       nil,
	}
	if nc, ok := s.coordinates().Coordinate(self.Name); ok {
		out["Coord"] = nc.Coord // this agent's LAN coordinate, as Consul's
	}
	s.addDebugAndStats(out)
	writeJSON(w, r, out)
}

// isServer tells whether this agent is a server: one with a Raft node, or
// one without servers at all (it holds the whole state itself).
func (s *Server) isServer() bool {
	return s.cfg.Consensus == nil || s.cfg.Consensus.Node() != nil
}

// debugConfig is /v1/agent/self's DebugConfig: the agent's settings under
// the names and in the formats of Consul's sanitized RuntimeConfig
// (addresses as "tcp://ip:port", durations as Go writes them). Clients
// read fields from it: one that joins nodes reads SerfAdvertiseAddrLAN.
func (s *Server) debugConfig() map[string]any {
	cfg := s.reg.Config()
	serf := "tcp://" + net.JoinHostPort(cfg.Address, strconv.Itoa(cfg.AgentPort))
	out := map[string]any{
		"Datacenter":               cfg.Datacenter,
		"PrimaryDatacenter":        cfg.Datacenter,
		"NodeName":                 cfg.NodeName,
		"NodeID":                   cfg.NodeID,
		"NodeMeta":                 mapOrEmpty(cfg.NodeMeta),
		"DataDir":                  cfg.DataDir,
		"AdvertiseAddrLAN":         cfg.Address,
		"AdvertiseAddrWAN":         cfg.Address,
		"SerfAdvertiseAddrLAN":     serf,
		"SerfPortLAN":              cfg.AgentPort,
		"TaggedAddresses":          s.reg.Self().TaggedAddresses,
		"Version":                  s.cfg.Version,
		"Revision":                 "",
		"VersionPrerelease":        "",
		"EnableLocalScriptChecks":  s.cfg.EnableScriptChecks,
		"EnableRemoteScriptChecks": s.cfg.EnableScriptChecks,
		"HTTPMaxConnsPerClient":    max(s.cfg.MaxConnsPerClient, 0),
		"KVMaxValueSize":           registry.MaxKVValue,
		"ServerMode":               s.isServer(),
	}
	for k, v := range s.cfg.Settings {
		out[k] = v
	}
	return out
}
