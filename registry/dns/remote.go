package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// Remote answers what this agent's catalog does not hold: another
// datacenter's services and nodes (the agent's wiring asks the HTTP API
// with ?dc=, which a server sends over the WAN).
type Remote interface {
	// Instances answers every instance of service (with tag, when
	// given) in dc, with its checks; the DNS server keeps the healthy.
	Instances(ctx context.Context, dc, service, tag string) ([]registry.Instance, error)
	// Node answers dc's node called name; nil when it has none.
	Node(ctx context.Context, dc, name string) (*registry.NodeEntry, error)
	// Query executes dc's prepared query called name (an ID or a name;
	// dc "" is this datacenter) and answers the datacenter that answered
	// (failover may move it), the query's DNS TTL (0: none set) and the
	// instances; registry.ErrNotFound when dc has no such query. src is
	// the client's address (Consul's near=_ip finds the node that has it).
	Query(ctx context.Context, dc, name string, src netip.Addr) (answered string, ttl time.Duration, insts []registry.Instance, err error)
}

// remoteTimeout bounds one question to another datacenter: a client's
// resolver gives up after a few seconds anyway.
const remoteTimeout = 5 * time.Second

// remoteReply answers q, a name of another datacenter, through Remote. It
// blocks: the UDP path calls it from the goroutine of a forwarded query.
// A datacenter with no path, or without the name, is NXDOMAIN, as Consul
// answers; one that did not answer is SERVFAIL (a resolver tries again,
// or elsewhere).
func (s *Server) remoteReply(ctx context.Context, out []byte, q *query, src netip.Addr, tcp bool) []byte {
	ctx, cancel := context.WithTimeout(ctx, remoteTimeout)
	defer cancel()
	key := q.key
	qtype := binary.BigEndian.Uint16(key[len(key)-2:])
	qname, _, _ := mdns.UnpackDomainName(key[:len(key)-2], 0)
	ls := labels(key[:q.domOff])
	n, dc, port, _ := splitKind(ls)
	kind, rest := ls[n], ls[:n]
	a := newAnswer(qname, qtype)
	if dc != strings.ToLower(s.cfg.Datacenter) {
		a.remote = dc
	}
	if qtype == mdns.TypeANY {
		qtype = 0
	}
	var found bool
	switch kind {
	case "service":
		a.kind = kindService
		name, tag, ok := serviceName(rest)
		if ok {
			insts, err := s.cfg.Remote.Instances(ctx, dc, name, tag)
			if failed(err) {
				s.log.Debug("another datacenter's service", "dc", dc, "service", name, "err", err)
				return errReply(out, q, mdns.RcodeServerFailure, true, s.cfg.MaxUDPSize)
			}
			found = err == nil && s.serviceAnswer(a, insts, tag, port, qtype)
		}
	case "query":
		a.kind, a.ordered = kindService, true
		qdc, ttl, insts, err := s.cfg.Remote.Query(ctx, dc, strings.Join(rest, "."), src)
		if failed(err) && !errors.Is(err, registry.ErrNotFound) {
			s.log.Debug("a prepared query", "err", err)
			return errReply(out, q, mdns.RcodeServerFailure, true, s.cfg.MaxUDPSize)
		}
		if qdc != s.cfg.Datacenter {
			a.remote = qdc
		}
		if found = err == nil && s.serviceAnswer(a, insts, "", "", qtype); found && ttl > 0 {
			for _, rr := range append(a.ans, a.extra...) {
				rr.Header().Ttl = uint32(ttl / time.Second)
			}
		}
	case "node":
		a.kind = kindNode
		if len(rest) > 0 {
			node, err := s.cfg.Remote.Node(ctx, dc, strings.Join(rest, "."))
			if failed(err) {
				s.log.Debug("another datacenter's node", "dc", dc, "err", err)
				return errReply(out, q, mdns.RcodeServerFailure, true, s.cfg.MaxUDPSize)
			}
			if found = node != nil; found {
				a.ans = addrRecords(qname, node.Address, qtype, seconds(s.cfg.NodeTTL))
			}
		}
	}
	soa := s.soa(s.cfg.Registry.Snapshot())
	switch {
	case !found:
		a.rcode, a.ns, a.ans, a.extra = mdns.RcodeNameError, []mdns.RR{soa}, nil, nil
	case len(a.ans) == 0:
		a.ns = []mdns.RR{soa}
	}
	a.seal()
	return render(out, a.wire(s, slotFor(tcp, q)), q, true)
}

// failed tells an error of Remote that is not "no path".
func failed(err error) bool { return err != nil && !errors.Is(err, registry.ErrNoPath) }
