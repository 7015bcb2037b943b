package api

import (
	"net/http"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
)

// WAN is what the API needs of the servers' WAN pool (registry/wan's Pool
// has these methods); the agent's wiring sets it on servers only.
type WAN interface {
	// Members are the WAN pool's members, named node.dc.
	Members() []registry.Member
	// Join contacts servers of the pool and answers how many answered.
	Join(addrs []string) (int, error)
	// Datacenters answers every datacenter known, this one first, then
	// nearest first.
	Datacenters() []string
	// ServerAddrs answers the server ports of dc's alive servers, nearest
	// first.
	ServerAddrs(dc string) []string
	// DatacenterCoordinates answers each datacenter's servers' WAN
	// coordinates.
	DatacenterCoordinates() map[string][]registry.NodeCoordinate
}

// A request with ?dc= naming another datacenter is served there, as
// Consul forwards its RPC: a client agent hands it to a server of its own
// datacenter, and that server sends it over the WAN to a server port of
// the other datacenter, nearest first, the next one when a server cannot
// be dialled. The request goes as it came, token included: the other
// datacenter checks it against its own ACLs, and answers with its own
// index and headers (blocking included). A datacenter with no alive
// server in the WAN pool answers 500 No path to datacenter at once; one
// whose servers are cut off answers 500 once the dial or the start of the
// answer times out (wanDial, then RPCHoldTimeout plus a blocking wait).

// dcHeader marks a request that crossed the WAN, with the datacenter it
// came from; the server port serves such a request the whole API.
const dcHeader = "X-Pier-From-Datacenter"

// wanDial bounds one dial to another datacenter's server: a WAN cut that
// drops packets shows as a dial that never answers.
const wanDial = 3 * time.Second

// federated answers whether Consul serves path from another datacenter.
func federated(path string) bool {
	if path == "/v1/catalog/datacenters" {
		return false
	}
	for _, p := range []string{"/v1/catalog/", "/v1/health/", "/v1/kv/", "/v1/session/", "/v1/txn", "/v1/query",
		"/v1/coordinate/node", "/v1/status/", "/v1/operator/raft/", "/v1/operator/autopilot/", "/v1/event/fire/",
		"/v1/acl/", "/v1/internal/acl/"} {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

// toDatacenter serves r from the datacenter its ?dc= names when that is
// not this one; false means r is this datacenter's to serve.
func (s *Server) toDatacenter(w http.ResponseWriter, r *http.Request) bool {
	dc := r.URL.Query().Get("dc")
	own := s.reg.Config().Datacenter
	if dc == "" || dc == own || !federated(r.URL.Path) {
		return false
	}
	if r.Header.Get(dcHeader) != "" {
		// Sent here for dc by a server whose pool says this server is of
		// dc: never sent on again.
		httpError(w, http.StatusInternalServerError, "No path to datacenter %q", dc)
		return true
	}
	s.sendToDatacenter(w, r, dc)
	return true
}

// sendToDatacenter serves r in dc, another datacenter, from a server (a
// client hands it to one of its own).
func (s *Server) sendToDatacenter(w http.ResponseWriter, r *http.Request, dc string) {
	if s.cfg.WAN == nil {
		if s.clientOfServers() {
			s.forwardToServer(w, r)
			return
		}
		httpError(w, http.StatusInternalServerError, "No path to datacenter %q", dc)
		return
	}
	servers := s.cfg.WAN.ServerAddrs(dc)
	if len(servers) == 0 {
		httpError(w, http.StatusInternalServerError, "No path to datacenter %q", dc)
		return
	}
	r.Header.Set(dcHeader, s.reg.Config().Datacenter)
	rewind := s.rewindable(r)
	via := forwarding{transport: s.wanFwd, within: s.wanAnswerWithin(r), wan: true}
	deadline := time.Now().Add(s.cfg.RPCHoldTimeout)
	for i, addr := range servers {
		retry := rewind != nil && i < len(servers)-1 && time.Now().Before(deadline)
		if s.forwardVia(w, r, addr, rewind, retry, via) {
			return
		}
	}
	// The last try answered with its error.
}

// wanAnswerWithin bounds the wait for the start of another datacenter's
// answer: its servers hold a request for a leader up to RPCHoldTimeout,
// and a blocking query for its wait.
func (s *Server) wanAnswerWithin(r *http.Request) time.Duration {
	return s.cfg.RPCHoldTimeout + s.blockingWait(r)
}

// catalogDatacenters lists every datacenter, this one first and then
// nearest first (Consul's order by round trip); a client asks a server.
func (s *Server) catalogDatacenters(w http.ResponseWriter, r *http.Request) {
	if s.cfg.WAN != nil {
		writeJSON(w, r, s.cfg.WAN.Datacenters())
		return
	}
	if s.clientOfServers() && s.askServer(w, r) {
		return
	}
	writeJSON(w, r, []string{s.reg.Config().Datacenter})
}

// clientOfServers reports whether this agent is a client of servers.
func (s *Server) clientOfServers() bool {
	return s.cfg.Consensus != nil && s.cfg.Consensus.Node() == nil
}

// askServer forwards a read a server answers better (it knows the WAN
// pool) to one, when a server is known; false: none is, answer locally.
func (s *Server) askServer(w http.ResponseWriter, r *http.Request) bool {
	if r.Header.Get(hopHeader) != "" || len(s.cfg.Consensus.Servers()) == 0 {
		return false
	}
	s.forwardToServer(w, r)
	return true
}

// coordinateDatacenters answers, per datacenter nearest first, the WAN
// coordinates of its servers, as Consul's area "wan". Without a WAN pool
// it answers this datacenter with the LAN coordinates of the catalog's
// nodes, as before servers existed.
func (s *Server) coordinateDatacenters(w http.ResponseWriter, r *http.Request) {
	if s.cfg.WAN == nil {
		if s.clientOfServers() && s.askServer(w, r) {
			return
		}
		writeJSON(w, r, []datacenterMap{{
			Datacenter:  s.reg.Config().Datacenter,
			AreaID:      "wan",
			Coordinates: coordinateList(r, s.coordinates(), s.reg.Snapshot()),
		}})
		return
	}
	coords := s.cfg.WAN.DatacenterCoordinates()
	out := []datacenterMap{}
	for _, dc := range s.cfg.WAN.Datacenters() {
		m := datacenterMap{Datacenter: dc, AreaID: "wan", Coordinates: []coordinateEntry{}}
		for _, nc := range coords[dc] {
			// The pool names a server node.dc; Consul answers node alone
			// here, which consul rtt -wan matches against.
			node := strings.TrimSuffix(nc.Node, "."+dc)
			m.Coordinates = append(m.Coordinates, coordinateEntry{Node: node, Coord: nc.Coord, CreateIndex: nc.CreateIndex, ModifyIndex: nc.ModifyIndex})
		}
		out = append(out, m)
	}
	writeJSON(w, r, out)
}

// wanMembers answers ?wan members: the WAN pool's on a server, none on a
// client, as Consul.
func (s *Server) wanMembers() []registry.Member {
	if s.cfg.WAN == nil {
		return nil
	}
	return s.cfg.WAN.Members()
}

// joinWAN is PUT /v1/agent/join/:addr?wan=1.
func (s *Server) joinWAN(w http.ResponseWriter, addr string) {
	if s.cfg.WAN == nil {
		httpError(w, http.StatusInternalServerError, "Must be a server to join WAN cluster")
		return
	}
	if _, err := s.cfg.WAN.Join([]string{addr}); err != nil {
		httpError(w, http.StatusInternalServerError, "join %s: %v", addr, err)
		return
	}
	s.log.Info("joined the WAN pool", "addr", addr)
}
