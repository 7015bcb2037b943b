package api

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/serf/coordinate"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
)

// Coordinates is what the coordinate endpoints and ?near= need of the
// gossip layer's network coordinates (registry/gossip's Gossip has these
// methods); the Cluster provides it when it has them. Without it the
// lists are empty and ?near= leaves the order as it is.
type Coordinates interface {
	// Coordinates answers the latest published set.
	Coordinates() *registry.CoordinateSet
	// UpdateCoordinate stores a node's coordinate pushed by a client.
	UpdateCoordinate(node string, c *coordinate.Coordinate) error
}

// coordinateEntry is Consul's structs.Coordinate with the indexes of the
// set in which the coordinate appeared and last changed.
type coordinateEntry struct {
	Node        string
	Segment     string
	Coord       *coordinate.Coordinate
	CreateIndex uint64
	ModifyIndex uint64
}

// datacenterMap is Consul's structs.DatacenterMap.
type datacenterMap struct {
	Datacenter  string
	AreaID      string
	Coordinates []coordinateEntry
}

func (s *Server) coordinateRoutes() {
	s.raftRoute("GET /v1/coordinate/datacenters", s.coordinateDatacenters, acl.Anyone) // filtered
	s.route("GET /v1/coordinate/nodes", s.coordinateNodes, acl.Anyone)                 // filtered
	s.route("GET /v1/coordinate/node/{node}", s.coordinateNode, nodeRead)
	s.writes("/v1/coordinate/update", s.coordinateUpdate, acl.Anyone) // node:write on the body's node
}

func (s *Server) coordSource() Coordinates {
	c, _ := s.cfg.Cluster.(Coordinates)
	return c
}

// coordinates answers the published set; an empty one without a source.
func (s *Server) coordinates() *registry.CoordinateSet {
	if src := s.coordSource(); src != nil {
		if set := src.Coordinates(); set != nil {
			return set
		}
	}
	return &registry.CoordinateSet{Index: 1}
}

// blockCoordinates is block for the coordinate set, whose index is its own:
// coordinates are learned and published by gossip, not kept in the catalog.
func (s *Server) blockCoordinates(w http.ResponseWriter, r *http.Request, q query) *registry.CoordinateSet {
	set := s.coordinates()
	if q.minIndex > 0 && set.Index == q.minIndex && set.Changed != nil {
		wait := q.wait
		if wait > 0 {
			wait += rand.N(wait/16 + 1)
		}
		timer := time.NewTimer(wait)
		defer timer.Stop()
		s.met.blockStart()
		defer s.met.blockEnd()
		select {
		case <-set.Changed:
			set = s.coordinates()
		case <-timer.C:
		case <-r.Context().Done():
		}
	}
	w.Header().Set("X-Consul-Index", strconv.FormatUint(max(set.Index, 1), 10))
	return set
}

// coordinateList is the set's entries for nodes in the catalog that the
// request may read, as Consul keeps coordinates only for catalog nodes and
// filters them by node:read.
func coordinateList(r *http.Request, set *registry.CoordinateSet, snap *registry.Snapshot) []coordinateEntry {
	p := acl.PolicyOf(r)
	out := []coordinateEntry{}
	for _, nc := range set.Nodes {
		if _, ok := snap.Node(nc.Node); !ok || p != nil && !p.NodeRead(nc.Node) {
			continue
		}
		out = append(out, coordinateEntry{Node: nc.Node, Coord: nc.Coord, CreateIndex: nc.CreateIndex, ModifyIndex: nc.ModifyIndex})
	}
	return out
}

func (s *Server) coordinateNodes(w http.ResponseWriter, r *http.Request) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	set := s.blockCoordinates(w, r, q)
	writeJSON(w, r, coordinateList(r, set, s.reg.Snapshot())) // no ?filter, as Consul

}

// coordinateNode answers a list of the node's one coordinate (Consul's has
// one per network segment), or 404 with no body when there is none.
func (s *Server) coordinateNode(w http.ResponseWriter, r *http.Request) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	set := s.blockCoordinates(w, r, q)
	name := r.PathValue("node")
	nc, found := set.Coordinate(name)
	if _, inCatalog := s.reg.Snapshot().Node(name); !found || !inCatalog {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	writeJSON(w, r, []coordinateEntry{{Node: nc.Node, Coord: nc.Coord, CreateIndex: nc.CreateIndex, ModifyIndex: nc.ModifyIndex}})
}

// coordinateUpdate stores the coordinate a client pushes for a node, as a
// Consul agent pushes its own to the servers. As Consul's state store does,
// an update for a node not in the catalog is accepted and dropped.
func (s *Server) coordinateUpdate(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req struct {
		Node    string
		Segment string
		Coord   *coordinate.Coordinate
	}
	if err := json.Unmarshal(body, &req); err != nil {
		httpError(w, http.StatusBadRequest, "Request decode failed: %v", err)
		return
	}
	switch {
	case req.Node == "":
		httpError(w, http.StatusBadRequest, "Node: missing")
		return
	case req.Segment != "":
		httpError(w, http.StatusBadRequest, "Segment: pier has no network segments, not %q", req.Segment)
		return
	case req.Coord == nil:
		httpError(w, http.StatusBadRequest, "Coord: missing")
		return
	case !req.Coord.IsValid() || req.Coord.Error < 0 || req.Coord.Height < 0:
		httpError(w, http.StatusBadRequest, "Coord: invalid coordinate (a negative error or height)")
		return
	}
	// Compatible with this agent's own, as Consul checks against its LAN
	// coordinate; Serf's dimensions when it has none yet.
	dims := int(coordinate.DefaultConfig().Dimensionality)
	if own, ok := s.coordinates().Coordinate(s.self()); ok {
		dims = len(own.Coord.Vec)
	}
	if len(req.Coord.Vec) != dims {
		httpError(w, http.StatusBadRequest, "Coord: incompatible coordinate: %d dimensions, not %d", len(req.Coord.Vec), dims)
		return
	}
	if p := acl.PolicyOf(r); p != nil && !p.NodeWrite(req.Node) {
		acl.Denied(w)
		return
	}
	src := s.coordSource()
	if src == nil {
		httpError(w, http.StatusNotImplemented, "this agent keeps no network coordinates (it runs no gossip)")
		return
	}
	if _, ok := s.reg.Snapshot().Node(req.Node); !ok {
		return
	}
	if err := src.UpdateCoordinate(req.Node, req.Coord); err != nil {
		httpError(w, http.StatusBadRequest, "Coord: %v", err)
	}
}

// sortNear orders list by the estimated round trip from the ?near= node
// (_agent is this agent), nearest first and nodes without a coordinate
// last, keeping the order among equals. As Consul, a near node without a
// coordinate leaves the order as it is.
func sortNear[E any](s *Server, r *http.Request, list []E, nodeOf func(*E) string) {
	sortNearFrom(s, r.URL.Query().Get("near"), list, nodeOf)
}

// sortNearFrom is sortNear from the node near.
func sortNearFrom[E any](s *Server, near string, list []E, nodeOf func(*E) string) {
	if near == "" || len(list) < 2 {
		return
	}
	if near == "_agent" {
		near = s.self()
	}
	set := s.coordinates()
	from, ok := set.Coordinate(near)
	if !ok {
		return
	}
	dist := make(map[string]float64, len(list))
	for i := range list {
		name := nodeOf(&list[i])
		if _, done := dist[name]; done {
			continue
		}
		d := math.Inf(1)
		if nc, ok := set.Coordinate(name); ok && from.Coord.IsCompatibleWith(nc.Coord) {
			d = from.Coord.DistanceTo(nc.Coord).Seconds()
		}
		dist[name] = d
	}
	slices.SortStableFunc(list, func(a, b E) int {
		da, db := dist[nodeOf(&a)], dist[nodeOf(&b)]
		switch {
		case da < db:
			return -1
		case da > db:
			return 1
		}
		return 0
	})
}
