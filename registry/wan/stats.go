package wan

import "strconv"

// SerfStats answers what memberlist knows of the WAN pool for `consul
// info`'s serf_wan section, as gossip.Gossip's SerfStats does for the LAN
// pool; the membership counts come from Members.
func (p *Pool) SerfStats() map[string]string {
	return map[string]string{
		"encrypted":    strconv.FormatBool(p.cfg.Keyring != nil),
		"health_score": strconv.Itoa(p.ml.GetHealthScore()),
		"intent_queue": "0", // the pool sends no broadcasts of its own
	}
}
