package main

// In-process servers for the tests of the subcommands served by the Raft
// state (lock, snapshot, operator raft): real hashicorp/raft nodes on
// loopback, each behind a real api.Server, as registry/api's tests run
// them. The subcommands are pointed at the leader's API, so these servers
// need no server port of their own.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"
	hraft "github.com/hashicorp/raft"

	"github.com/pier-dev/pier/deploy/eventually"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
	"github.com/pier-dev/pier/registry/raft"
)

type raftTestServer struct {
	name   string
	node   *raft.Node
	reg    *registry.Registry
	addr   string // the API's host:port
	client *consul.Client
}

type testConsensus struct{ node *raft.Node }

func (c testConsensus) Node() *raft.Node  { return c.node }
func (c testConsensus) Servers() []string { return nil }

// startRaftServers starts n servers in one group and waits for a leader.
func startRaftServers(t *testing.T, n int) []*raftTestServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	var servers []*raftTestServer
	var members []raft.Server
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		rcfg := registry.DefaultConfig()
		rcfg.NodeName, rcfg.Address = name, "127.0.0.1"
		reg, err := registry.New(rcfg)
		if err != nil {
			t.Fatal(err)
		}
		var node *raft.Node
		for attempt := 0; ; attempt++ {
			node, err = raft.New(raft.Config{ID: name, Bind: freeLoopback(t), ApplyTimeout: 5 * time.Second, Tune: func(c *hraft.Config) {
				c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
				c.CommitTimeout = 5 * time.Millisecond
			}})
			if err == nil {
				break
			}
			if attempt == 5 {
				t.Fatal(err)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := node.Run(ctx); err != nil {
				t.Errorf("raft %s: %v", name, err)
			}
		}()
		acfg := api.DefaultConfig()
		acfg.Registry = reg
		acfg.RPCHoldTimeout = 3 * time.Second
		acfg.Consensus = testConsensus{node}
		srv, err := api.New(acfg)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Run(ctx, ln); err != nil {
				t.Errorf("api %s: %v", name, err)
			}
		}()
		client, err := consul.NewClient(&consul.Config{Address: ln.Addr().String(), Scheme: "http"})
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, &raftTestServer{name: name, node: node, reg: reg, addr: ln.Addr().String(), client: client})
		members = append(members, raft.Server{ID: name, Address: node.Addr(), Voter: true})
	}
	for _, s := range servers {
		if err := s.node.Bootstrap(members); err != nil {
			t.Fatal(err)
		}
	}
	eventually.True(t, 15*time.Second, "a leader", func() bool { return raftLeader(servers) != nil })
	return servers
}

func raftLeader(servers []*raftTestServer) *raftTestServer {
	for _, s := range servers {
		if s.node.IsLeader() {
			return s
		}
	}
	return nil
}

func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// syncBuffer is a bytes.Buffer that a command's output copier and the
// subcommand may write at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
