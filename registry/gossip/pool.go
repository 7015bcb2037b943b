package gossip

import (
	"context"
	"log"
	"log/slog"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
)

// What another memberlist pool of this agent (the servers' WAN pool,
// registry/wan) shares with this one: the keyring, the way coordinates are
// learned from pings, and memberlist's log lines.

// MemberlistKeyring is the keyring this pool encrypts with, nil without
// encryption. Keyring operations change it in place, so a pool that was
// handed it follows every install, use and remove made on this agent.
func (g *Gossip) MemberlistKeyring() *memberlist.Keyring { return g.keyring }

// PoolCoordinates learns Vivaldi coordinates from another pool's pings,
// as this pool does from its own.
type PoolCoordinates struct{ c *coordinates }

// NewPoolCoordinates starts self at the origin.
func NewPoolCoordinates(self string) (*PoolCoordinates, error) {
	c, err := newCoordinates(self)
	if err != nil {
		return nil, err
	}
	return &PoolCoordinates{c}, nil
}

// PingDelegate is memberlist's Config.Ping for that pool.
func (p *PoolCoordinates) PingDelegate() memberlist.PingDelegate { return pingDelegate{p.c} }

// Coordinates answers the latest published set.
func (p *PoolCoordinates) Coordinates() *registry.CoordinateSet { return p.c.pub.Load() }

// Run publishes what was learned every period until ctx ends; known says
// which nodes are still members.
func (p *PoolCoordinates) Run(ctx context.Context, period time.Duration, known func(string) bool) {
	p.c.run(ctx, period, known)
}

// MemberlistLogger turns memberlist's log lines into records of l.
func MemberlistLogger(l *slog.Logger) *log.Logger { return newStdLogger(l) }
