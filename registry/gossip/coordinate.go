package gossip

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/coordinate"

	"github.com/pier-dev/pier/registry"
)

// Network coordinates, as Serf keeps them for Consul: every ack to one of
// memberlist's pings carries the answering node's Vivaldi coordinate, and
// the pinging node feeds that coordinate and the measured round trip into
// its own coordinate.Client. Each agent so learns its own coordinate and
// the latest one every node it pings reported; memberlist pings every
// member in turn, so that is every node. What was learned is published as
// an immutable registry.CoordinateSet at most once per CoordinatePeriod, as
// Consul's servers batch coordinate updates, so that a blocking reader of
// /v1/coordinate/nodes wakes every few seconds, not at every ping.

// pingVersion is the first byte of our ack payload; a payload of another
// version is ignored, so the format can change without breaking a rolling
// upgrade.
const pingVersion = 1

// maxDims bounds the dimensions a payload may claim (Serf's default is 8).
const maxDims = 32

// coordinates is this agent's coordinate client and what it learned.
type coordinates struct {
	self   string
	client *coordinate.Client

	mu     sync.Mutex
	nodes  map[string]registry.NodeCoordinate
	dirty  bool
	index  uint64
	notify chan struct{} // closed at the next publication

	pub atomic.Pointer[registry.CoordinateSet]
}

func newCoordinates(self string) (*coordinates, error) {
	client, err := coordinate.NewClient(coordinate.DefaultConfig())
	if err != nil {
		return nil, fmt.Errorf("gossip: coordinates: %w", err)
	}
	c := &coordinates{self: self, client: client, nodes: map[string]registry.NodeCoordinate{}, notify: make(chan struct{})}
	// This node's starting coordinate (the origin, with the largest
	// error) is listed at once, so that a single agent answers for itself.
	c.set(self, client.GetCoordinate())
	c.publish()
	return c, nil
}

// set records node's coordinate for the next publication.
func (c *coordinates) set(node string, coord *coordinate.Coordinate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	nc, ok := c.nodes[node]
	if !ok {
		nc = registry.NodeCoordinate{Node: node, CreateIndex: c.index + 1}
	}
	nc.Coord, nc.ModifyIndex = coord, c.index+1
	c.nodes[node] = nc
	c.dirty = true
}

// publish makes what was set since the last publication visible, under a
// new index, and wakes the readers waiting on the old set.
func (c *coordinates) publish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dirty {
		return
	}
	c.dirty = false
	c.index++
	old := c.notify
	c.notify = make(chan struct{})
	set := &registry.CoordinateSet{Index: c.index, Changed: c.notify}
	for _, name := range slices.Sorted(maps.Keys(c.nodes)) {
		set.Nodes = append(set.Nodes, c.nodes[name])
	}
	// The new set is in place before the readers of the old one wake, so
	// that they load it.
	c.pub.Store(set)
	close(old)
}

// forget drops the coordinates of nodes that left the catalog (left,
// reaped, forced out), so that a cluster whose nodes come and go under new
// names does not keep them all.
func (c *coordinates) forget(known func(string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.nodes {
		if name != c.self && !known(name) {
			delete(c.nodes, name)
			c.client.ForgetNode(name)
			c.dirty = true
		}
	}
}

// run publishes every period until ctx ends; known says which nodes are
// still in the catalog.
func (c *coordinates) run(ctx context.Context, period time.Duration, known func(string) bool) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.forget(known)
			c.publish()
		case <-ctx.Done():
			return
		}
	}
}

// Coordinates answers the latest published coordinates: this node's own and
// those the other nodes last reported.
func (g *Gossip) Coordinates() *registry.CoordinateSet { return g.coord.pub.Load() }

// UpdateCoordinate stores a coordinate a client pushed for node
// (PUT /v1/coordinate/update, as a Consul agent pushes its own); it is
// published with the next batch, and a later ping of that node replaces it.
func (g *Gossip) UpdateCoordinate(node string, coord *coordinate.Coordinate) error {
	if node == "" {
		return errors.New("gossip: a coordinate needs a node name")
	}
	if err := checkCoordinate(coord); err != nil {
		return err
	}
	g.coord.set(node, coord.Clone())
	return nil
}

// pingDelegate implements memberlist.PingDelegate. Memberlist calls it from
// its probe goroutine: it does arithmetic and takes short locks only.
type pingDelegate struct{ c *coordinates }

// AckPayload is our coordinate, for the node that pinged us.
func (p pingDelegate) AckPayload() []byte {
	return encodeCoordinate(p.c.client.GetCoordinate())
}

// NotifyPingComplete feeds the peer's coordinate and the round trip into our
// client and remembers both coordinates.
func (p pingDelegate) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	if len(payload) == 0 || other == nil || other.Name == p.c.self {
		return
	}
	coord, err := decodeCoordinate(payload)
	if err != nil {
		return // another version, or garbage: the ping itself counted
	}
	mine, err := p.c.client.Update(other.Name, coord, rtt)
	if err != nil {
		return // incompatible dimensions or an RTT out of range
	}
	p.c.set(other.Name, coord)
	p.c.set(p.c.self, mine)
}

// encodeCoordinate lays out a coordinate as the version byte, the number of
// dimensions (one byte), and then each component, the error, adjustment and
// height as little-endian float64s: fixed-size fields need no decoder
// library on a path that reads network input.
func encodeCoordinate(c *coordinate.Coordinate) []byte {
	b := make([]byte, 2, 2+8*(len(c.Vec)+3))
	b[0], b[1] = pingVersion, byte(len(c.Vec))
	for _, f := range c.Vec {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	for _, f := range []float64{c.Error, c.Adjustment, c.Height} {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	return b
}

// decodeCoordinate reads what encodeCoordinate wrote, from a peer: the
// length must match the dimensions exactly and every number must be finite.
func decodeCoordinate(b []byte) (*coordinate.Coordinate, error) {
	if len(b) < 2 {
		return nil, errors.New("gossip: coordinate payload too short")
	}
	if b[0] != pingVersion {
		return nil, fmt.Errorf("gossip: coordinate payload version %d", b[0])
	}
	dims := int(b[1])
	if dims == 0 || dims > maxDims || len(b) != 2+8*(dims+3) {
		return nil, fmt.Errorf("gossip: coordinate payload of %d bytes for %d dimensions", len(b), dims)
	}
	f := func(i int) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b[2+8*i:])) }
	c := &coordinate.Coordinate{Vec: make([]float64, dims)}
	for i := range dims {
		c.Vec[i] = f(i)
	}
	c.Error, c.Adjustment, c.Height = f(dims), f(dims+1), f(dims+2)
	if err := checkCoordinate(c); err != nil {
		return nil, err
	}
	return c, nil
}

// checkCoordinate refuses what the Vivaldi arithmetic cannot use: NaN or
// infinite components, a negative error or height, and a dimension count
// other than ours (the client would refuse it anyway).
func checkCoordinate(c *coordinate.Coordinate) error {
	if c == nil {
		return errors.New("gossip: no coordinate")
	}
	if !c.IsValid() || c.Error < 0 || c.Height < 0 {
		return errors.New("gossip: coordinate has a component that is not a finite number, or a negative error or height")
	}
	if want := coordinate.DefaultConfig().Dimensionality; uint(len(c.Vec)) != want {
		return fmt.Errorf("gossip: coordinate has %d dimensions, not %d", len(c.Vec), want)
	}
	return nil
}

// knownNode reports whether node is in the catalog.
func (g *Gossip) knownNode(node string) bool {
	_, ok := g.reg.Snapshot().Node(node)
	return ok
}
