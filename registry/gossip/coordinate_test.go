package gossip

import (
	"bytes"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/coordinate"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
)

// coordCluster starts n nodes that publish coordinates every period.
func coordCluster(t *testing.T, n int, period time.Duration) []*node {
	t.Helper()
	tweak := func(c *Config) { c.CoordinatePeriod = period }
	nodes := []*node{startNode(t, "n0", opts{tweak: tweak})}
	for i := 1; i < n; i++ {
		nodes = append(nodes, startNode(t, fmt.Sprintf("n%d", i), opts{join: []string{nodes[0].g.Addr()}, tweak: tweak}))
	}
	return nodes
}

// Every node of a three-node cluster learns, from memberlist's pings, a
// coordinate for itself and for each other node, and its own coordinate
// leaves the origin's maximal error.
func TestCoordinatesConverge(t *testing.T) {
	nodes := coordCluster(t, 3, 100*time.Millisecond)
	maxErr := coordinate.DefaultConfig().VivaldiErrorMax
	for _, nd := range nodes {
		eventually.NoError(t, 60*time.Second, "coordinates for every node on "+nd.reg.NodeName(), func() error {
			set := nd.g.Coordinates()
			for _, name := range []string{"n0", "n1", "n2"} {
				nc, ok := set.Coordinate(name)
				if !ok {
					return fmt.Errorf("no coordinate for %s in set %d", name, set.Index)
				}
				if name == nd.reg.NodeName() && nc.Coord.Error >= maxErr {
					return fmt.Errorf("own coordinate not updated yet: %+v", nc.Coord)
				}
			}
			return nil
		})
	}
	set := nodes[0].g.Coordinates()
	for _, nc := range set.Nodes {
		if nc.CreateIndex == 0 || nc.ModifyIndex < nc.CreateIndex || nc.ModifyIndex > set.Index {
			t.Fatalf("indexes of %s: create %d modify %d in set %d", nc.Node, nc.CreateIndex, nc.ModifyIndex, set.Index)
		}
	}
	// A reader of the set is woken by the next publication.
	select {
	case <-set.Changed:
	case <-time.After(60 * time.Second):
		t.Fatal("no newer coordinate set while pings go on")
	}
	if next := nodes[0].g.Coordinates(); next.Index <= set.Index {
		t.Fatalf("index did not move: %d then %d", set.Index, next.Index)
	}
}

// Pings update the coordinate client at once but the published set only at
// the period's tick: blocking readers are not woken per ping.
func TestCoordinatesAreBatched(t *testing.T) {
	nodes := coordCluster(t, 2, time.Hour)
	maxErr := coordinate.DefaultConfig().VivaldiErrorMax
	eventually.True(t, 60*time.Second, "n0's client updated by a ping", func() bool {
		return nodes[0].g.coord.client.GetCoordinate().Error < maxErr
	})
	set := nodes[0].g.Coordinates()
	if set.Index != 1 || len(set.Nodes) != 1 {
		t.Fatalf("published before the period: index %d, %d nodes", set.Index, len(set.Nodes))
	}
	select {
	case <-set.Changed:
		t.Fatal("readers were woken before the period")
	default:
	}
	nodes[0].g.coord.publish()
	if set := nodes[0].g.Coordinates(); set.Index != 2 || len(set.Nodes) != 2 {
		t.Fatalf("after publishing: index %d, %d nodes", set.Index, len(set.Nodes))
	}
}

func TestUpdateCoordinateRefusesBadInput(t *testing.T) {
	n := startNode(t, "n0", opts{tweak: func(c *Config) { c.CoordinatePeriod = time.Hour }})
	good := coordinate.NewCoordinate(coordinate.DefaultConfig())
	nan := good.Clone()
	nan.Vec[3] = math.NaN()
	for name, c := range map[string]*coordinate.Coordinate{
		"nil": nil, "nan": nan, "dims": {Vec: []float64{1}}, "negative height": {Vec: make([]float64, 8), Height: -1},
	} {
		if err := n.g.UpdateCoordinate("x", c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := n.g.UpdateCoordinate("x", good); err != nil {
		t.Fatal(err)
	}
	n.g.coord.publish()
	if _, ok := n.g.Coordinates().Coordinate("x"); !ok {
		t.Fatal("the pushed coordinate is not published")
	}
}

// FuzzCoordinatePayload feeds arbitrary ack payloads, as any peer can send
// them, to the decoder and a coordinate client: nothing may panic, what
// decodes re-encodes to the same bytes, and the client stays valid.
func FuzzCoordinatePayload(f *testing.F) {
	cfg := coordinate.DefaultConfig()
	c := coordinate.NewCoordinate(cfg)
	c.Vec[0], c.Height, c.Adjustment = 0.002, 0.0001, -0.0003
	f.Add(encodeCoordinate(c))
	f.Add(encodeCoordinate(coordinate.NewCoordinate(cfg)))
	f.Add([]byte{pingVersion})
	f.Add([]byte{pingVersion, 8})
	f.Add([]byte{2, 8, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		coord, err := decodeCoordinate(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeCoordinate(coord), b) {
			t.Fatalf("%x decodes to %+v, which encodes differently", b, coord)
		}
		client, err := coordinate.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Update("peer", coord, 10*time.Millisecond); err != nil {
			t.Fatalf("a decoded coordinate was refused: %v", err)
		}
		if !client.GetCoordinate().IsValid() {
			t.Fatal("the client's coordinate became invalid")
		}
		p := pingDelegate{&coordinates{self: "me", client: client, nodes: map[string]registry.NodeCoordinate{}, notify: make(chan struct{})}}
		p.NotifyPingComplete(&memberlist.Node{Name: "peer"}, time.Millisecond, b)
	})
}

// A node that leaves the catalog leaves the coordinates too.
func TestCoordinatesForgetNodesThatLeft(t *testing.T) {
	nodes := coordCluster(t, 2, 100*time.Millisecond)
	eventually.True(t, 60*time.Second, "n0 has n1's coordinate", func() bool {
		_, ok := nodes[0].g.Coordinates().Coordinate("n1")
		return ok
	})
	nodes[1].stop()
	eventually.True(t, 60*time.Second, "n0 forgot n1's coordinate", func() bool {
		_, ok := nodes[0].g.Coordinates().Coordinate("n1")
		return !ok
	})
	if _, ok := nodes[0].g.Coordinates().Coordinate("n0"); !ok {
		t.Fatal("n0 forgot its own coordinate")
	}
}
