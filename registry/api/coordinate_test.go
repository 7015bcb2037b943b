package api_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/coordinate"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/gossip"
)

var _ api.Coordinates = (*gossip.Gossip)(nil)

// gossipNode starts a registry and its gossip on loopback, joined to join
// when given, publishing coordinates every 100 ms.
func gossipNode(t *testing.T, name string, join ...string) (*registry.Registry, *gossip.Gossip) {
	t.Helper()
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address = name, "127.0.0.1"
	reg, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	gc := gossip.DefaultConfig()
	gc.Registry = reg
	gc.BindAddr, gc.BindPort = "127.0.0.1", 0
	gc.StartJoin = join
	gc.LeaveTimeout = 2 * time.Second
	gc.CoordinatePeriod = 100 * time.Millisecond
	gc.Memberlist = func(c *memberlist.Config) {
		c.ProbeInterval = 200 * time.Millisecond
		c.ProbeTimeout = 500 * time.Millisecond
		c.GossipInterval = 50 * time.Millisecond
		c.PushPullInterval = 2 * time.Second
		c.TCPTimeout = 2 * time.Second
	}
	g, err := gossip.New(gc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return reg, g
}

// serveAPI serves reg's API with cluster on loopback and answers a
// consul/api client for it.
func serveAPI(t *testing.T, reg *registry.Registry, cluster api.Cluster) *consul.Client {
	c, _ := serveAPIAt(t, reg, cluster, nil)
	return c
}

// serveAPIAt is serveAPI that also answers the base URL.
func serveAPIAt(t *testing.T, reg *registry.Registry, cluster api.Cluster, adjust func(*api.Config)) (*consul.Client, string) {
	t.Helper()
	acfg := api.DefaultConfig()
	acfg.Registry, acfg.Cluster, acfg.Version = reg, cluster, "test"
	if adjust != nil {
		adjust(&acfg)
	}
	srv, err := api.New(acfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api Run: %v", err)
		}
	})
	client, err := consul.NewClient(&consul.Config{Address: ln.Addr().String(), Scheme: "http"})
	if err != nil {
		t.Fatal(err)
	}
	return client, "http://" + ln.Addr().String()
}

// A three-node gossip cluster on loopback learns coordinates for every
// node from its pings; the consul/api client reads them as `consul rtt`
// does, blocks on them, and gets a 404 for a node without one.
func TestCoordinatesFromGossip(t *testing.T) {
	reg0, g0 := gossipNode(t, "n0")
	gossipNode(t, "n1", g0.Addr())
	gossipNode(t, "n2", g0.Addr())
	client := serveAPI(t, reg0, g0)
	maxErr := coordinate.DefaultConfig().VivaldiErrorMax

	var meta *consul.QueryMeta
	eventually.NoError(t, 60*time.Second, "a coordinate for every node, n0's own updated", func() error {
		entries, m, err := client.Coordinate().Nodes(nil)
		if err != nil {
			return err
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Node)
			if e.Node == "n0" && e.Coord.Error >= maxErr {
				return fmt.Errorf("n0's coordinate not updated yet: %+v", e.Coord)
			}
		}
		if !slices.Equal(names, []string{"n0", "n1", "n2"}) {
			return fmt.Errorf("nodes %v", names)
		}
		meta = m
		return nil
	})

	// consul rtt n1 n2: both coordinates, and their distance.
	c1, _, err := client.Coordinate().Node("n1", nil)
	if err != nil || len(c1) != 1 || c1[0].Node != "n1" || c1[0].Segment != "" {
		t.Fatalf("Node(n1): %+v, %v", c1, err)
	}
	c2, _, err := client.Coordinate().Node("n2", nil)
	if err != nil || len(c2) != 1 {
		t.Fatalf("Node(n2): %+v, %v", c2, err)
	}
	if d := c1[0].Coord.DistanceTo(c2[0].Coord); d < 0 || d > 10*time.Second {
		t.Fatalf("n1 to n2: %v", d)
	}
	if _, _, err := client.Coordinate().Node("nope", nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Node(nope): %v, want a 404", err)
	}

	// Pings go on, so a blocking query returns with a newer index.
	_, m2, err := client.Coordinate().Nodes(&consul.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second})
	if err != nil || m2.LastIndex <= meta.LastIndex {
		t.Fatalf("blocking Nodes: index %d after %d, %v", m2.LastIndex, meta.LastIndex, err)
	}

	self, err := client.Agent().Self()
	if err != nil || self["Coord"]["Vec"] == nil || self["Coord"]["Height"] == nil {
		t.Fatalf("agent self's Coord: %+v, %v", self["Coord"], err)
	}

	dcs, err := client.Coordinate().Datacenters()
	if err != nil || len(dcs) != 1 || dcs[0].Datacenter != "dc1" || dcs[0].AreaID != "wan" || len(dcs[0].Coordinates) != 3 {
		t.Fatalf("Datacenters: %+v, %v", dcs, err)
	}
}

// staticCoords is a cluster whose coordinates are only those pushed
// through PUT /v1/coordinate/update, so that ?near= is tested with
// distances the test chooses.
type staticCoords struct {
	mu    sync.Mutex
	nodes map[string]*coordinate.Coordinate
	index uint64
}

func (*staticCoords) Members() []registry.Member { return nil }
func (*staticCoords) Join([]string) (int, error) { return 0, nil }
func (*staticCoords) Leave() error               { return nil }
func (*staticCoords) ForceLeave(string) error    { return nil }
func (*staticCoords) Prune(string) error         { return nil }

func (s *staticCoords) Coordinates() *registry.CoordinateSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := &registry.CoordinateSet{Index: s.index + 1}
	for name, c := range s.nodes {
		set.Nodes = append(set.Nodes, registry.NodeCoordinate{Node: name, Coord: c, CreateIndex: 1, ModifyIndex: s.index + 1})
	}
	slices.SortFunc(set.Nodes, func(a, b registry.NodeCoordinate) int { return strings.Compare(a.Node, b.Node) })
	return set
}

func (s *staticCoords) UpdateCoordinate(node string, c *coordinate.Coordinate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes[node] = c
	s.index++
	return nil
}

// at is a coordinate ms milliseconds from the origin along one axis.
func at(ms float64) *coordinate.Coordinate {
	c := coordinate.NewCoordinate(coordinate.DefaultConfig())
	c.Vec[0] = ms / 1000
	c.Height, c.Error = 0, 0.1
	return c
}

// ?near= orders catalog nodes, catalog service instances and health
// entries by the estimated round trip from the named node (_agent: this
// one), nodes without a coordinate last; an unknown near node leaves the
// order by name.
func TestNearSortsByCoordinates(t *testing.T) {
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"a", "b", "c", "d"} {
		reg.SetMemberStatus(n, "127.0.0.1", registry.MemberAlive)
		svc := registry.Service{ID: "web-" + n, Name: "web", Port: 80 + i, Weights: registry.Weights{Passing: 1, Warning: 1}}
		reg.Merge([]registry.Entry{{Node: n, Kind: registry.KindService, Key: svc.ID, Version: 7, Service: &svc}})
	}
	client := serveAPI(t, reg, &staticCoords{nodes: map[string]*coordinate.Coordinate{}})

	// node1 at 0; c at 5 ms, a at 20 ms, b at 50 ms; d has none.
	for n, ms := range map[string]float64{"node1": 0, "c": 5, "a": 20, "b": 50} {
		if _, err := client.Coordinate().Update(&consul.CoordinateEntry{Node: n, Coord: at(ms)}, nil); err != nil {
			t.Fatalf("Update(%s): %v", n, err)
		}
	}

	nodes, _, err := client.Catalog().Nodes(&consul.QueryOptions{Near: "_agent"})
	if err != nil {
		t.Fatal(err)
	}
	if got := nodeNames(nodes); !slices.Equal(got, []string{"node1", "c", "a", "b", "d"}) {
		t.Fatalf("nodes near _agent: %v", got)
	}
	nodes, _, err = client.Catalog().Nodes(&consul.QueryOptions{Near: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if got := nodeNames(nodes); !slices.Equal(got, []string{"b", "a", "c", "node1", "d"}) {
		t.Fatalf("nodes near b: %v", got)
	}
	nodes, _, err = client.Catalog().Nodes(&consul.QueryOptions{Near: "nope"})
	if err != nil {
		t.Fatal(err)
	}
	if got := nodeNames(nodes); !slices.Equal(got, []string{"a", "b", "c", "d", "node1"}) {
		t.Fatalf("nodes near an unknown node: %v", got)
	}

	svcs, _, err := client.Catalog().Service("web", "", &consul.QueryOptions{Near: "a"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range svcs {
		got = append(got, s.Node)
	}
	if !slices.Equal(got, []string{"a", "c", "b", "d"}) {
		t.Fatalf("catalog service near a: %v", got)
	}

	entries, _, err := client.Health().Service("web", "", false, &consul.QueryOptions{Near: "node1"})
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, e := range entries {
		got = append(got, e.Node.Node)
	}
	if !slices.Equal(got, []string{"c", "a", "b", "d"}) {
		t.Fatalf("health service near node1: %v", got)
	}

	// The pushed coordinates are listed, for catalog nodes only.
	if _, err := client.Coordinate().Update(&consul.CoordinateEntry{Node: "not-in-catalog", Coord: at(1)}, nil); err != nil {
		t.Fatal(err)
	}
	list, _, err := client.Coordinate().Nodes(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 || list[0].Node != "a" || list[0].Coord.Vec[0] != 0.02 {
		t.Fatalf("coordinate nodes: %+v", list)
	}
}

func nodeNames(nodes []*consul.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Node)
	}
	return out
}

// Bad updates are 400s that name the field, and store nothing.
func TestCoordinateUpdateBadInput(t *testing.T) {
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	coords := &staticCoords{nodes: map[string]*coordinate.Coordinate{"node1": at(0)}}
	_, base := serveAPIAt(t, reg, coords, nil)
	for body, field := range map[string]string{
		`{"Coord":{"Vec":[0,0,0,0,0,0,0,0]}}`:                                  "Node",
		`{"Node":"node1"}`:                                                     "Coord",
		`{"Node":"node1","Coord":{"Vec":[0,0]}}`:                               "Coord",
		`{"Node":"node1","Coord":{"Vec":[0,0,0,0,0,0,0,0],"Height":-1}}`:       "Coord",
		`{"Node":"node1","Segment":"alpha","Coord":{"Vec":[0,0,0,0,0,0,0,0]}}`: "Segment",
		`{"Node":`: "decode",
	} {
		req, _ := http.NewRequest(http.MethodPut, base+"/v1/coordinate/update", strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		msg := string(b)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(msg, field) {
			t.Errorf("%s: %d %q, want a 400 naming %s", body, resp.StatusCode, msg, field)
		}
	}
	if c := coords.nodes["node1"]; c.Vec[0] != 0 || len(coords.nodes) != 1 {
		t.Fatalf("a bad update changed what is stored: %+v", coords.nodes)
	}
}

// With ACLs, coordinate lists show the nodes the token may read, one
// node's needs node:read on it, and pushing one needs node:write on it.
func TestCoordinateACL(t *testing.T) {
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rc)
	if err != nil {
		t.Fatal(err)
	}
	reg.SetMemberStatus("a", "127.0.0.1", registry.MemberAlive)
	reg.SetMemberStatus("b", "127.0.0.1", registry.MemberAlive)
	coords := &staticCoords{nodes: map[string]*coordinate.Coordinate{"node1": at(0), "a": at(1), "b": at(2)}}
	const aRead, aWrite = "66666666-a-read", "77777777-a-write"
	_, base := serveAPIAt(t, reg, coords, func(c *api.Config) {
		c.ACL = api.ACLConfig{Enabled: true, DefaultPolicy: "deny", InitialManagement: "11111111-mgmt", Tokens: []api.ACLToken{
			{Secret: aRead, Rules: api.ACLRules{NodePrefix: map[string]string{"a": "read"}}},
			{Secret: aWrite, Rules: api.ACLRules{NodePrefix: map[string]string{"a": "write"}}},
		}}
	})
	client := func(token string) *consul.Client {
		c, err := consul.NewClient(&consul.Config{Address: strings.TrimPrefix(base, "http://"), Token: token})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	anon, ar, aw := client(""), client(aRead), client(aWrite)
	if list, _, err := anon.Coordinate().Nodes(nil); err != nil || len(list) != 0 {
		t.Fatalf("anonymous Nodes: %+v %v", list, err)
	}
	list, _, err := ar.Coordinate().Nodes(nil)
	if err != nil || len(list) != 1 || list[0].Node != "a" {
		t.Fatalf("Nodes with read on a: %+v %v", list, err)
	}
	if _, _, err := ar.Coordinate().Node("b", nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Node(b) with read on a: %v, want a 403", err)
	}
	if dcs, err := ar.Coordinate().Datacenters(); err != nil || len(dcs) != 1 || len(dcs[0].Coordinates) != 1 {
		t.Fatalf("Datacenters with read on a: %+v %v", dcs, err)
	}
	if _, err := ar.Coordinate().Update(&consul.CoordinateEntry{Node: "a", Coord: at(9)}, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Update(a) with read on a: %v, want a 403", err)
	}
	if _, err := aw.Coordinate().Update(&consul.CoordinateEntry{Node: "b", Coord: at(9)}, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Update(b) with write on a: %v, want a 403", err)
	}
	if _, err := aw.Coordinate().Update(&consul.CoordinateEntry{Node: "a", Coord: at(9)}, nil); err != nil {
		t.Fatalf("Update(a) with write on a: %v", err)
	}
	if c := coords.Coordinates(); c.Nodes[0].Coord.Vec[0] != 0.009 || c.Nodes[1].Coord.Vec[0] != 0.002 {
		t.Fatalf("after the updates: %+v", c.Nodes)
	}
}

// FuzzCoordinateUpdate: any body to PUT /v1/coordinate/update is a 200 or
// a 400; a 400 stores nothing, and whatever is stored is a coordinate the
// Vivaldi arithmetic can use.
func FuzzCoordinateUpdate(f *testing.F) {
	f.Add(`{"Node":"node1","Coord":{"Vec":[0,0,0,0,0,0,0,0],"Error":1.5,"Adjustment":0,"Height":0.00001}}`)
	f.Add(`{"Node":"node1","Coord":{"Vec":[1e308,-1e308,0,0,0,0,0,0],"Error":1e308,"Adjustment":-1e308,"Height":1e308}}`)
	f.Add(`{"Node":"node1","Coord":{"Vec":[0,0]}}`)
	f.Add(`{"Node":"node1","Coord":{"Vec":[0]}}`)
	f.Add(`{"Node":"","Segment":"x"}`)
	f.Add(`[]`)
	rc := registry.DefaultConfig()
	rc.NodeName, rc.Address = "node1", "127.0.0.1"
	reg, err := registry.New(rc)
	if err != nil {
		f.Fatal(err)
	}
	coords := &staticCoords{nodes: map[string]*coordinate.Coordinate{}}
	acfg := api.DefaultConfig()
	acfg.Registry, acfg.Cluster = reg, coords
	srv, err := api.New(acfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		before := len(coords.nodes)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/v1/coordinate/update", strings.NewReader(body)))
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest:
			if len(coords.nodes) != before {
				t.Fatalf("a 400 stored something: %s", body)
			}
		default:
			t.Fatalf("%s: %d %s", body, rec.Code, rec.Body)
		}
		for n, c := range coords.nodes {
			if n != "node1" || !c.IsValid() || len(c.Vec) != 8 {
				t.Fatalf("stored %s: %+v", n, c)
			}
			client, err := coordinate.NewClient(coordinate.DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client.Update("node1", c, time.Millisecond); err != nil {
				t.Fatalf("stored a coordinate the client refuses: %v", err)
			}
		}
	})
}
