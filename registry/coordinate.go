package registry

import (
	"slices"
	"strings"

	"github.com/hashicorp/serf/coordinate"
)

// NodeCoordinate is one node's network coordinate (Vivaldi, as Serf's) as
// this agent last learned it, with the indexes of the coordinate set at
// which it first appeared and last changed. registry/gossip learns them from
// its pings; registry/api serves them and sorts answers by them (?near=).
type NodeCoordinate struct {
	Node        string
	Coord       *coordinate.Coordinate
	CreateIndex uint64
	ModifyIndex uint64
}

// CoordinateSet is an immutable, published set of coordinates: its index
// moves at each publication, which is batched (a few seconds apart) so that
// blocking readers are not woken at every ping; Changed is closed when a
// newer set is published. Nodes is ordered by name.
type CoordinateSet struct {
	Index   uint64
	Nodes   []NodeCoordinate
	Changed <-chan struct{}
}

// Coordinate answers the node's entry in the set.
func (s *CoordinateSet) Coordinate(node string) (NodeCoordinate, bool) {
	i, ok := slices.BinarySearchFunc(s.Nodes, node, func(nc NodeCoordinate, name string) int { return strings.Compare(nc.Node, name) })
	if !ok {
		return NodeCoordinate{}, false
	}
	return s.Nodes[i], true
}
