package gossip

import "strconv"

// SerfStats answers the gossip figures Consul's `consul info` shows under
// serf_lan that memberlist knows: its health score (0 is healthy; it grows
// while this node misses probes), the broadcasts waiting to be sent, and
// whether gossip is encrypted. Membership counts come from Members.
func (g *Gossip) SerfStats() map[string]string {
	out := map[string]string{
		"encrypted":    strconv.FormatBool(g.keyring != nil),
		"intent_queue": "0",
		"health_score": "0",
	}
	if g.ml != nil {
		out["health_score"] = strconv.Itoa(g.ml.GetHealthScore())
	}
	if g.queue != nil {
		out["intent_queue"] = strconv.Itoa(g.queue.NumQueued())
	}
	return out
}
