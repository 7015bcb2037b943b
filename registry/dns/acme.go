package dns

import (
	"strings"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// ACME's DNS-01 challenge (RFC 8555 §8.4): the front door that orders a
// certificate writes the TXT record for _acme-challenge.<name> into its
// storage, the servers' KV under registry.ACMEChallengeKVPrefix (through
// Raft), and every agent answers it from its snapshot, so the CA may ask
// any of them. Only a name with a record is answered here, to anyone (as
// the catalog is); any other name goes on as names outside the domain do.
// The answers are computed per query, not kept: the CA asks a few times
// per order.

const acmeLabel = "_acme-challenge"

// acmeAnswer returns the TXT records of q's name, or nil when q is not a
// TXT (or ANY) question about an _acme-challenge name that has records.
func (s *Server) acmeAnswer(q *query) *answer {
	if q.qclass != mdns.ClassINET || (q.qtype != mdns.TypeTXT && q.qtype != mdns.TypeANY) ||
		len(q.key) < 2+1+len(acmeLabel) || int(q.key[0]) != len(acmeLabel) || string(q.key[1:1+len(acmeLabel)]) != acmeLabel {
		return nil
	}
	name, _, err := mdns.UnpackDomainName(q.key[:len(q.key)-2], 0)
	if err != nil {
		return nil
	}
	es := s.cfg.Registry.Snapshot().KVList(registry.ACMEChallengeKVPrefix + strings.TrimSuffix(name, ".") + "/")
	if len(es) == 0 {
		return nil
	}
	a := newAnswer(name, q.qtype)
	for _, e := range es {
		a.ans = append(a.ans, &mdns.TXT{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeTXT, Class: mdns.ClassINET}, Txt: []string{string(e.Value)}})
	}
	return a.seal()
}
