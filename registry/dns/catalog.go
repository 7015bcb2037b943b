package dns

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// Reply shapes. A packed reply depends on how much room the client gives:
// UDP without EDNS (512 bytes and UDPAnswerLimit answers), UDP with EDNS
// (three sizes; a client gets the largest that fits its own), and TCP.
const (
	slotUDP = iota
	slotEDNS512
	slotEDNS1232
	slotEDNS4096
	slotTCP
	nSlots
)

var slotSize = [nSlots]int{512, 512, 1232, 4096, mdns.MaxMsgSize}

func slotFor(tcp bool, q *query) int {
	switch {
	case tcp:
		return slotTCP
	case !q.edns:
		return slotUDP
	case q.size >= 4096:
		return slotEDNS4096
	case q.size >= 1232:
		return slotEDNS1232
	}
	return slotEDNS512
}

// maxRotations bounds the packed orders kept per answer: each instance is
// first in as many replies as any other, and a trimmed UDP reply still
// carries each of them in turn.
const maxRotations = 16

// answer is the reply to one question about the catalog, computed once per
// snapshot. Its packed forms are made on first use and never change.
type answer struct {
	qname string // lowercase
	qtype uint16
	rcode int
	ans   []mdns.RR
	ns    []mdns.RR
	extra []mdns.RR
	rots  int
	// ordered keeps the records in the order given: a prepared query's
	// answer, shuffled and sorted by distance when it was executed (as
	// Consul's DNS, which neither shuffles nor rotates it).
	ordered bool
	kind    uint8  // kindService, kindNode or kindOther (metrics)
	remote  string // the datacenter of the records when it is another one
	async   bool   // asked of Remote each time (another datacenter, a prepared query)
	packed  [nSlots][]atomic.Pointer[[]byte]
}

func newAnswer(qname string, qtype uint16) *answer {
	return &answer{qname: qname, qtype: qtype}
}

// seal fixes the number of rotations once the records are in.
func (a *answer) seal() *answer {
	a.rots = max(1, min(len(a.ans), maxRotations))
	if a.ordered {
		a.rots = 1
	}
	for i := range a.packed {
		a.packed[i] = make([]atomic.Pointer[[]byte], a.rots)
	}
	return a
}

// wire returns the packed reply for a slot, packing it on first use.
func (a *answer) wire(s *Server, slot int) []byte {
	rot := 0
	if a.rots > 1 {
		rot = rand.IntN(a.rots)
	}
	p := &a.packed[slot][rot]
	if w := p.Load(); w != nil {
		return *w
	}
	w := a.pack(s, slot, rot)
	p.Store(&w)
	return w
}

func (a *answer) pack(s *Server, slot, rot int) []byte {
	m := new(mdns.Msg)
	m.Response = true
	m.Authoritative = true
	m.Rcode = a.rcode
	m.Question = []mdns.Question{{Name: a.qname, Qtype: a.qtype, Qclass: mdns.ClassINET}}
	m.Answer = rotate(a.ans, rot)
	m.Ns = rotate(a.ns, 0)
	m.Extra = rotate(a.extra, rot)
	limited := false
	switch slot {
	case slotUDP:
		if len(m.Answer) > s.cfg.UDPAnswerLimit {
			m.Answer, limited = m.Answer[:s.cfg.UDPAnswerLimit], true
		}
	case slotEDNS512, slotEDNS1232, slotEDNS4096:
		m.SetEdns0(uint16(s.cfg.MaxUDPSize), false)
	}
	n := len(m.Answer)
	m.Truncate(slotSize[slot])
	// TC only when answers are missing: dropped additional records are
	// fine, the client can ask for them.
	m.Truncated = len(m.Answer) < n || (limited && s.cfg.EnableTruncate)
	m.Compress = true
	w, err := m.Pack()
	if err != nil {
		s.log.Warn("cannot pack a catalog answer", "name", a.qname, "type", mdns.TypeToString[a.qtype], "err", err)
		e := new(mdns.Msg)
		e.Response = true
		e.Rcode = mdns.RcodeServerFailure
		e.Question = m.Question
		w, _ = e.Pack()
	}
	return w
}

// rotate returns a copy of rrs starting at r: packing appends to and
// truncates the message's sections, and the answer's own slices are shared
// by every reader.
func rotate(rrs []mdns.RR, r int) []mdns.RR {
	if len(rrs) == 0 {
		return nil
	}
	r %= len(rrs)
	out := make([]mdns.RR, 0, len(rrs)+1) // room for the OPT
	return append(append(out, rrs[r:]...), rrs[:r]...)
}

// view holds the answers computed from one snapshot. It is replaced, not
// cleared, when the catalog changes, so readers never see a mix.
type view struct {
	snap *registry.Snapshot

	mu      sync.RWMutex
	answers map[string]*answer

	foldOnce sync.Once
	services map[string][]string // lowercase name → the catalog's spellings
	nodes    map[string]string
}

func newView(snap *registry.Snapshot) *view {
	return &view{snap: snap, answers: map[string]*answer{}}
}

// currentView returns the view of the registry's current snapshot, starting
// a new one when the catalog changed.
func (s *Server) currentView() *view {
	snap := s.cfg.Registry.Snapshot()
	v := s.view.Load()
	if v != nil && v.snap == snap {
		return v
	}
	nv := newView(snap)
	if s.view.CompareAndSwap(v, nv) {
		return nv
	}
	if v = s.view.Load(); v.snap == snap {
		return v
	}
	return nv // another reader moved on already; answer from ours
}

// catalogAnswer returns the answer for key, a name under the domain whose
// domain starts at domOff.
func (s *Server) catalogAnswer(key []byte, domOff int) *answer {
	v := s.currentView()
	v.mu.RLock()
	a := v.answers[string(key)]
	v.mu.RUnlock()
	if a != nil {
		return a
	}
	a = s.build(v, key, domOff).seal()
	v.mu.Lock()
	if old := v.answers[string(key)]; old != nil {
		a = old
	} else if len(v.answers) < s.cfg.MaxAnswers {
		v.answers[string(key)] = a
	}
	v.mu.Unlock()
	return a
}

func (v *view) fold() {
	v.foldOnce.Do(func() {
		v.services = map[string][]string{}
		for _, nt := range v.snap.ServiceNames() {
			l := strings.ToLower(nt.Name)
			v.services[l] = append(v.services[l], nt.Name)
		}
		v.nodes = map[string]string{}
		for _, n := range v.snap.Nodes() {
			v.nodes[strings.ToLower(n.Name)] = n.Name
		}
	})
}

// instances returns the instances of a service, its name compared without
// case as DNS does.
func (v *view) instances(lname string) []registry.Instance {
	v.fold()
	var out []registry.Instance
	for _, name := range v.services[lname] {
		out = append(out, v.snap.ServiceInstances(name)...)
	}
	return out
}

func (v *view) node(lname string) (*registry.NodeEntry, bool) {
	v.fold()
	name, ok := v.nodes[lname]
	if !ok {
		return nil, false
	}
	return v.snap.Node(name)
}

// build computes the answer to a question under the domain, as Consul
// answers: [tag.]name.service[.dc], _name._tag.service[.dc],
// node.node[.dc] and hex.addr[.dc]; after .service also <port>.port and
// <dc>.dc parts.
func (s *Server) build(v *view, key []byte, domOff int) *answer {
	qtype := binary.BigEndian.Uint16(key[len(key)-2:])
	qname, _, err := mdns.UnpackDomainName(key[:len(key)-2], 0)
	if err != nil {
		qname = s.cfg.Domain // cannot happen: the key came from a valid name
	}
	a := newAnswer(qname, qtype)
	if qtype == mdns.TypeANY {
		qtype = 0 // below: any type that a name has
	}
	soa := s.soa(v.snap)
	nx := func() *answer {
		a.rcode, a.ns, a.ans, a.extra = mdns.RcodeNameError, []mdns.RR{soa}, nil, nil
		return a
	}
	nodata := func() *answer {
		a.ns = []mdns.RR{soa}
		return a
	}
	ls := labels(key[:domOff])
	if len(ls) == 0 { // the domain itself
		if qtype == mdns.TypeSOA || qtype == 0 {
			a.ans = []mdns.RR{soa}
			return a
		}
		return nodata()
	}
	n, dc, port, ok := splitKind(ls)
	if !ok {
		return nx()
	}
	kind, rest := ls[n], ls[:n]
	if port != "" && kind != "service" {
		return nx() // a named port belongs to services only
	}
	switch kind {
	case "service":
		a.kind = kindService
	case "node", "addr":
		a.kind = kindNode
	}
	if dc != "" && dc != strings.ToLower(s.cfg.Datacenter) && kind != "addr" {
		if s.cfg.Remote == nil {
			return nx() // no WAN: this datacenter only
		}
		a.remote, a.async = dc, true
		return a
	}
	if kind == "query" {
		if s.cfg.Remote == nil {
			return nx() // prepared queries are the servers'
		}
		a.kind, a.async = kindService, true
		return a
	}
	switch kind {
	case "node":
		if len(rest) == 0 {
			return nx()
		}
		node, ok := v.node(strings.Join(rest, "."))
		if !ok {
			return nx()
		}
		a.ans = addrRecords(qname, node.Address, qtype, seconds(s.cfg.NodeTTL))
	case "addr":
		if len(rest) != 1 {
			return nx()
		}
		ip, ok := decodeHexIP(rest[0])
		if !ok {
			return nx()
		}
		a.ans = addrRecords(qname, ip.String(), qtype, seconds(s.cfg.NodeTTL))
	case "service":
		name, tag, ok := serviceName(rest)
		if !ok || !s.serviceAnswer(a, v.instances(name), tag, port, qtype) {
			return nx() // as Consul: no healthy instance, no name
		}
	default:
		return nx()
	}
	if len(a.ans) == 0 {
		return nodata()
	}
	return a
}

// serviceName reads [tag.]name and _name._tag (RFC 2782; _tcp means any
// tag, as in Consul).
func serviceName(rest []string) (name, tag string, ok bool) {
	switch {
	case len(rest) == 1:
		return rest[0], "", true
	case len(rest) == 2 && strings.HasPrefix(rest[0], "_") && strings.HasPrefix(rest[1], "_"):
		name, tag = rest[0][1:], rest[1][1:]
		if tag == "tcp" {
			tag = ""
		}
		return name, tag, true
	case len(rest) == 2:
		return rest[1], rest[0], true
	}
	return "", "", false
}

// serviceAnswer fills a with the records of insts' healthy instances
// (with tag and the named port, when given); false: there is none.
func (s *Server) serviceAnswer(a *answer, insts []registry.Instance, tag, port string, qtype uint16) bool {
	insts = s.healthy(insts, tag)
	if !a.ordered {
		rand.Shuffle(len(insts), func(i, j int) { insts[i], insts[j] = insts[j], insts[i] })
	}
	if port != "" {
		insts = withPort(insts, port)
	}
	if len(insts) == 0 {
		return false
	}
	s.serviceRecords(a, insts, port, qtype)
	return true
}

func isKind(l string) bool { return l == "service" || l == "node" || l == "addr" || l == "query" }

// splitKind finds the kind label in ls (a name without the domain) and
// returns its index, with what follows it read as Consul reads it: nothing,
// a datacenter, or labelled parts <dc>.dc and <port-name>.port (Consul
// 1.22's named ports) in either order. ok is false for any other name.
func splitKind(ls []string) (at int, dc, port string, ok bool) {
	n := len(ls)
	switch {
	case isKind(ls[n-1]):
		return n - 1, "", "", true
	case n >= 2 && isKind(ls[n-2]):
		return n - 2, ls[n-1], "", true
	}
	for _, k := range []int{2, 4} {
		if n <= k || !isKind(ls[n-1-k]) {
			continue
		}
		dc, port = "", ""
		for i := n - k; i < n; i += 2 {
			switch ls[i+1] {
			case "dc":
				dc = ls[i]
			case "port":
				port = ls[i]
			default:
				return 0, "", "", false
			}
		}
		return n - 1 - k, dc, port, true
	}
	return 0, "", "", false
}

// withPort keeps the instances that have a port called name (compared
// without case, as DNS compares names). Consul answers NXDOMAIN as soon as
// one instance lacks it; leaving that one out instead lets a name keep
// answering while a multi-port deploy rolls out.
func withPort(in []registry.Instance, name string) []registry.Instance {
	out := in[:0]
	for _, i := range in {
		if namedPort(i.Service, name) != 0 {
			out = append(out, i)
		}
	}
	return out
}

func namedPort(s *registry.ServiceEntry, name string) int {
	for _, p := range s.Ports {
		if strings.EqualFold(p.Name, name) {
			return p.Port
		}
	}
	return 0
}

// healthy keeps the instances DNS shows: never critical ones, warning ones
// unless OnlyPassing, and only those carrying tag (without case) if given,
// in their order (serviceAnswer shuffles a service's once per snapshot;
// replies then rotate it).
func (s *Server) healthy(in []registry.Instance, tag string) []registry.Instance {
	out := in[:0]
	for _, i := range in {
		switch i.Status() {
		case registry.StatusPassing:
		case registry.StatusWarning:
			if s.cfg.OnlyPassing {
				continue
			}
		default:
			continue
		}
		if tag != "" && !hasTag(i.Service.Tags, tag) {
			continue
		}
		out = append(out, i)
	}
	return out
}

func hasTag(tags []string, tag string) bool {
	for _, t := range tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}

// serviceRecords fills a with the records of healthy instances.
// With port set, SRV records carry the instances' port of that name.
func (s *Server) serviceRecords(a *answer, insts []registry.Instance, port string, qtype uint16) {
	ttl := serviceTTL(s.cfg.ServiceTTL, insts[0].Service.Name)
	if qtype == mdns.TypeSRV {
		for _, in := range insts {
			target, extra := s.srvTarget(in, a.remote)
			if target == "" {
				continue
			}
			p := in.Service.Port
			if port != "" {
				p = namedPort(in.Service, port)
			}
			w := in.Service.Weights.Passing
			if in.Status() == registry.StatusWarning {
				w = in.Service.Weights.Warning
			}
			a.ans = append(a.ans, &mdns.SRV{
				Hdr:      mdns.RR_Header{Name: a.qname, Rrtype: mdns.TypeSRV, Class: mdns.ClassINET, Ttl: ttl},
				Priority: 1, Weight: uint16(max(0, min(w, 65535))), Port: uint16(p), Target: target,
			})
			for _, rr := range extra {
				rr.Header().Ttl = ttl
			}
			a.extra = append(a.extra, extra...)
		}
		return
	}
	seen := map[string]bool{}
	for _, in := range insts {
		addr := serviceAddr(in)
		if seen[addr] {
			continue
		}
		seen[addr] = true
		a.ans = append(a.ans, addrRecords(a.qname, addr, qtype, ttl)...)
	}
}

func serviceAddr(in registry.Instance) string {
	if in.Service.Address != "" {
		return in.Service.Address
	}
	return in.Node.Address
}

// srvTarget names the host of an SRV record and its address records, as
// Consul does: the node when the service has no address of its own, an
// addr name for an IP, and a host name as it is; under dc ("": this one).
func (s *Server) srvTarget(in registry.Instance, dc string) (string, []mdns.RR) {
	if dc == "" {
		dc = s.cfg.Datacenter
	}
	suffix := "." + strings.ToLower(dc) + "." + s.cfg.Domain
	if in.Service.Address == "" {
		t := strings.ToLower(in.Node.Name) + ".node" + suffix
		if _, ok := mdns.IsDomainName(t); !ok {
			return "", nil
		}
		return t, addrRecords(t, in.Node.Address, 0, 0)
	}
	if ip, err := netip.ParseAddr(in.Service.Address); err == nil {
		t := encodeHexIP(ip) + ".addr" + suffix
		return t, addrRecords(t, in.Service.Address, 0, 0)
	}
	if _, ok := mdns.IsDomainName(in.Service.Address); !ok {
		return "", nil
	}
	return mdns.Fqdn(in.Service.Address), nil
}

// addrRecords are the records of owner for an address: A or AAAA for an IP,
// a CNAME for a host name (as Consul answers). qtype 0 means any.
func addrRecords(owner, addr string, qtype uint16, ttl uint32) []mdns.RR {
	hdr := func(t uint16) mdns.RR_Header {
		return mdns.RR_Header{Name: owner, Rrtype: t, Class: mdns.ClassINET, Ttl: ttl}
	}
	ip, err := netip.ParseAddr(addr)
	switch {
	case err != nil:
		if _, ok := mdns.IsDomainName(addr); !ok || addr == "" {
			return nil
		}
		if qtype == 0 || qtype == mdns.TypeA || qtype == mdns.TypeAAAA || qtype == mdns.TypeCNAME {
			return []mdns.RR{&mdns.CNAME{Hdr: hdr(mdns.TypeCNAME), Target: mdns.Fqdn(addr)}}
		}
	case ip.Unmap().Is4():
		if qtype == 0 || qtype == mdns.TypeA {
			return []mdns.RR{&mdns.A{Hdr: hdr(mdns.TypeA), A: ip.Unmap().AsSlice()}}
		}
	default:
		if qtype == 0 || qtype == mdns.TypeAAAA {
			return []mdns.RR{&mdns.AAAA{Hdr: hdr(mdns.TypeAAAA), AAAA: ip.AsSlice()}}
		}
	}
	return nil
}

// encodeHexIP is Consul's addr label: 8 hex digits for IPv4, 32 for IPv6.
func encodeHexIP(ip netip.Addr) string {
	ip = ip.Unmap()
	b := ip.AsSlice()
	return hex.EncodeToString(b)
}

func decodeHexIP(s string) (netip.Addr, bool) {
	if len(s) != 8 && len(s) != 32 {
		return netip.Addr{}, false
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return netip.Addr{}, false
	}
	return netip.AddrFromSlice(b)
}

// soa is the domain's SOA, as Consul's: negative answers carry it, with
// TTL and minimum 0 so that nobody caches a missing service.
func (s *Server) soa(snap *registry.Snapshot) *mdns.SOA {
	return &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: s.cfg.Domain, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET},
		Ns:      "ns." + s.cfg.Domain,
		Mbox:    "hostmaster." + s.cfg.Domain,
		Serial:  uint32(snap.Index()),
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
	}
}
