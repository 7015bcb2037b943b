package api

import (
	"context"
	"time"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/raft"
)

// RunSessionHealthWithGrace is RunSessionHealth with the new leader's
// grace a test chooses.
func RunSessionHealthWithGrace(ctx context.Context, node *raft.Node, reg *registry.Registry, grace time.Duration) error {
	return runSessionHealth(ctx, node, reg, grace, nil)
}

// noServers is a client's Consensus that knows no server.
type noServers struct{}

func (noServers) Node() *raft.Node  { return nil }
func (noServers) Servers() []string { return nil }
