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
