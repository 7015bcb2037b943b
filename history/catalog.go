package history

import "github.com/pier-dev/pier/registry"

// Catalog is the Source of what the catalog knows: each service's passing
// instances and each node's checks by status.
type Catalog struct {
	Snapshot func() *registry.Snapshot
}

// Sample implements Source.
func (c Catalog) Sample(r *Recorder) {
	snap := c.Snapshot()
	for _, nt := range snap.ServiceNames() {
		healthy := 0
		for _, in := range snap.ServiceInstances(nt.Name) {
			if in.Status() == registry.StatusPassing {
				healthy++
			}
		}
		r.Set(Service, nt.Name, nt.Name, Healthy, float64(healthy))
	}
	// One pass over the checks, which are ordered by node.
	node := ""
	var counts [nodeFields]int
	flush := func() {
		for f, n := range counts {
			r.Set(Node, node, node, f, float64(n))
		}
		counts = [nodeFields]int{}
	}
	for _, n := range snap.Nodes() {
		for f := range nodeFields { // a node without checks is charted too
			r.Set(Node, n.Name, n.Name, f, 0)
		}
	}
	snap.Checks(func(c *registry.CheckEntry) bool {
		if c.Node != node {
			if node != "" {
				flush()
			}
			node = c.Node
		}
		switch c.Status {
		case registry.StatusPassing:
			counts[Passing]++
		case registry.StatusWarning:
			counts[Warning]++
		default:
			counts[Critical]++
		}
		return true
	})
	if node != "" {
		flush()
	}
}
