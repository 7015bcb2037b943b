package wan

import (
	"cmp"
	"math"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/serf/coordinate"

	"github.com/pier-dev/pier/registry"
)

// Server is one alive server of a datacenter, as the WAN pool knows it.
type Server struct {
	Name string // node.dc
	Addr string // its server port, host:port
	RTT  time.Duration
}

// Datacenters answers every datacenter with a server in the pool (alive
// or not), this one first, then the others nearest first by the median of
// the estimated round trips to their servers, as Consul sorts them; a
// datacenter without coordinates yet comes after those with, by name.
func (p *Pool) Datacenters() []string {
	byDC := p.servers(false)
	byDC[p.cfg.Datacenter] = append(byDC[p.cfg.Datacenter], nil...)
	dist := map[string]float64{}
	for dc, ss := range byDC {
		dist[dc] = median(ss)
	}
	dist[p.cfg.Datacenter] = -1
	out := make([]string, 0, len(byDC))
	for dc := range byDC {
		out = append(out, dc)
	}
	slices.SortFunc(out, func(a, b string) int {
		if c := cmp.Compare(dist[a], dist[b]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	return out
}

// Servers answers the alive servers of dc, nearest first.
func (p *Pool) Servers(dc string) []Server {
	return p.servers(true)[dc]
}

// servers groups the pool's servers by datacenter, nearest first.
func (p *Pool) servers(aliveOnly bool) map[string][]Server {
	set := p.coord.Coordinates()
	mine, _ := set.Coordinate(p.name)
	out := map[string][]Server{}
	for _, m := range p.Members() {
		if aliveOnly && m.Status != registry.MemberAlive || m.Status == registry.MemberLeft {
			continue
		}
		dc, addr, ok := serverOf(m)
		if !ok {
			continue
		}
		s := Server{Name: m.Name, Addr: addr, RTT: -1}
		if nc, ok := set.Coordinate(m.Name); ok && mine.Coord != nil {
			s.RTT = distance(mine.Coord, nc.Coord)
		}
		out[dc] = append(out[dc], s)
	}
	for _, ss := range out {
		slices.SortFunc(ss, func(a, b Server) int {
			if c := cmp.Compare(unknownLast(a.RTT), unknownLast(b.RTT)); c != 0 {
				return c
			}
			return cmp.Compare(a.Name, b.Name)
		})
	}
	return out
}

func unknownLast(d time.Duration) time.Duration {
	if d < 0 {
		return math.MaxInt64
	}
	return d
}

func distance(a, b *coordinate.Coordinate) time.Duration {
	if a == nil || b == nil || !a.IsCompatibleWith(b) {
		return -1
	}
	return a.DistanceTo(b)
}

// median of the known round trips, +Inf when none is known.
func median(ss []Server) float64 {
	var rtts []float64
	for _, s := range ss {
		if s.RTT >= 0 {
			rtts = append(rtts, s.RTT.Seconds())
		}
	}
	if len(rtts) == 0 {
		return math.Inf(1)
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2]
}

// ServerAddrs answers the server ports of dc's alive servers, nearest
// first.
func (p *Pool) ServerAddrs(dc string) []string {
	var out []string
	for _, s := range p.Servers(dc) {
		out = append(out, s.Addr)
	}
	return out
}

// DatacenterCoordinates answers the WAN coordinates of the servers of each
// datacenter (/v1/coordinate/datacenters), members that left excluded.
func (p *Pool) DatacenterCoordinates() map[string][]registry.NodeCoordinate {
	set := p.coord.Coordinates()
	out := map[string][]registry.NodeCoordinate{}
	for _, m := range p.Members() {
		if m.Status == registry.MemberLeft {
			continue
		}
		if nc, ok := set.Coordinate(m.Name); ok && m.Tags["dc"] != "" {
			out[m.Tags["dc"]] = append(out[m.Tags["dc"]], nc)
		}
	}
	return out
}

// serverOf reads a member's datacenter and server port from its tags (the
// same tags as a server's in the LAN pool: role=consul, dc, port).
func serverOf(m registry.Member) (dc, addr string, ok bool) {
	port, err := strconv.Atoi(m.Tags["port"])
	if m.Tags["role"] != "consul" || m.Tags["dc"] == "" || err != nil || port <= 0 || port > 65535 {
		return "", "", false
	}
	return m.Tags["dc"], net.JoinHostPort(m.Addr, strconv.Itoa(port)), true
}
