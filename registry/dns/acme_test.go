package dns

import (
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// TestACMEChallengeTXT: the DNS-01 records in the servers' agreed KV
// (registry.ACMEChallengeKVPrefix) are answered as TXT, authoritatively,
// over UDP and TCP and in any letter case; a name without records, or a
// question of another type, goes on as any name outside the domain
// (refused here: no recursors).
func TestACMEChallengeTXT(t *testing.T) {
	reg := newRegistry(t)
	s := start(t, reg, nil)
	p := registry.ACMEChallengeKVPrefix + "_acme-challenge.example.test/"
	reg.SetAgreed(registry.Agreed{Index: 2, KVIndex: 2, KV: registry.KVTree([]*registry.KVEntry{
		{Key: p + "a", Value: []byte("digest-one"), ModifyIndex: 2},
		{Key: p + "b", Value: []byte("digest-two"), ModifyIndex: 2},
		{Key: registry.ACMEKVPrefix + "certificates/x", Value: []byte("not a record"), ModifyIndex: 2},
	})})
	for _, network := range []string{"udp", "tcp"} {
		r := ask(t, s.addr, network, "_ACME-Challenge.Example.test.", mdns.TypeTXT, 0)
		if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 2 {
			t.Fatalf("%s: %v", network, r)
		}
		got := map[string]bool{}
		for _, rr := range r.Answer {
			txt, ok := rr.(*mdns.TXT)
			if !ok || len(txt.Txt) != 1 || txt.Hdr.Name != "_ACME-Challenge.Example.test." {
				t.Fatalf("%s: %v", network, rr)
			}
			got[txt.Txt[0]] = true
		}
		if !got["digest-one"] || !got["digest-two"] {
			t.Errorf("%s: %v", network, r.Answer)
		}
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"_acme-challenge.other.test.", mdns.TypeTXT},
		{"_acme-challenge.example.test.", mdns.TypeA},
		{"certificates.example.test.", mdns.TypeTXT},
	} {
		if r := ask(t, s.addr, "udp", q.name, q.qtype, 0); r.Rcode != mdns.RcodeRefused || len(r.Answer) != 0 {
			t.Errorf("%s %s: %v; want it left to forwarding (REFUSED with no recursors)", q.name, mdns.TypeToString[q.qtype], r)
		}
	}
	// The records go with the key.
	reg.SetAgreed(registry.Agreed{Index: 3, KVIndex: 3, KV: registry.KVTree(nil)})
	if r := ask(t, s.addr, "udp", "_acme-challenge.example.test.", mdns.TypeTXT, 0); len(r.Answer) != 0 {
		t.Errorf("after the delete: %v", r)
	}
}
