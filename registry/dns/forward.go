package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// forward resolves q, asked by src, through the recursors, caches the
// answer and returns the reply. If every recursor fails it answers
// SERVFAIL.
func (s *Server) forward(ctx context.Context, out []byte, q *query, src netip.Addr, tcp bool) []byte {
	if q.domOff >= 0 {
		return s.remoteReply(ctx, out, q, src, tcp) // a name of another datacenter, or a prepared query
	}
	e, err := s.resolve(ctx, q)
	if err != nil {
		s.log.Debug("forwarding failed", "err", err)
		return errReply(out, q, mdns.RcodeServerFailure, true, s.cfg.MaxUDPSize)
	}
	if b, ok := e.render(out, q, s.cfg.Now(), tcp, s.cfg.MaxUDPSize); ok {
		return b
	}
	return s.truncated(out, e, q)
}

// flight is one question on its way to the recursors; the queries for the
// same question that arrive meanwhile wait for it instead of asking again.
type flight struct {
	done chan struct{}
	e    *entry
	err  error
}

// resolve returns the answer to q's question from the recursors, asking
// them once however many clients ask at the same time.
func (s *Server) resolve(ctx context.Context, q *query) (*entry, error) {
	key := string(q.key)
	s.flightMu.Lock()
	if f, ok := s.flights[key]; ok {
		s.flightMu.Unlock()
		select {
		case <-f.done:
			return f.e, f.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// A flight that just ended has cached its answer before leaving the
	// map: look again before asking again.
	if e := s.cache.get(q.key, s.cfg.Now()); e != nil {
		s.flightMu.Unlock()
		return e, nil
	}
	f := &flight{done: make(chan struct{})}
	s.flights[key] = f
	s.flightMu.Unlock()

	f.e, f.err = s.fetch(ctx, q)
	s.flightMu.Lock()
	delete(s.flights, key)
	s.flightMu.Unlock()
	close(f.done)
	return f.e, f.err
}

// fetch asks the recursors and caches what they answer.
func (s *Server) fetch(ctx context.Context, q *query) (*entry, error) {
	name, _, err := mdns.UnpackDomainName(q.key[:len(q.key)-2], 0)
	if err != nil {
		return nil, err
	}
	m := new(mdns.Msg)
	m.SetQuestion(name, q.qtype)
	m.SetEdns0(uint16(s.cfg.MaxUDPSize), false)
	r, err := s.exchange(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", name, mdns.TypeToString[q.qtype], err)
	}
	now := s.cfg.Now()
	e, err := newEntry(r, now, s.cfg.CacheMaxTTL)
	if err != nil {
		return nil, fmt.Errorf("%s: bad upstream answer: %w", name, err)
	}
	if e.expires.After(now) {
		s.cache.put(string(q.key), e)
	}
	return e, nil
}

// exchange asks each recursor in turn, over UDP and again over TCP when the
// answer was truncated. SERVFAIL and REFUSED move on to the next one.
func (s *Server) exchange(ctx context.Context, m *mdns.Msg) (*mdns.Msg, error) {
	var last error
	for _, addr := range s.cfg.Recursors {
		c := &mdns.Client{Net: "udp", Timeout: s.cfg.RecursorTimeout, UDPSize: uint16(s.cfg.MaxUDPSize)}
		m.Id = mdns.Id()
		r, _, err := c.ExchangeContext(ctx, m, addr)
		if err == nil && r.Truncated {
			c.Net = "tcp"
			r, _, err = c.ExchangeContext(ctx, m, addr)
		}
		switch {
		case err != nil:
			last = fmt.Errorf("%s: %w", addr, err)
			continue
		case len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, m.Question[0].Name) || r.Question[0].Qtype != m.Question[0].Qtype:
			last = fmt.Errorf("%s: the answer is for another question", addr)
			continue
		case r.Rcode == mdns.RcodeServerFailure || r.Rcode == mdns.RcodeRefused:
			last = fmt.Errorf("%s: %s", addr, mdns.RcodeToString[r.Rcode])
			continue
		}
		return r, nil
	}
	if last == nil {
		last = errors.New("no recursors")
	}
	return nil, last
}

// entry is a forwarded answer, packed without ID, flags that depend on the
// client, or OPT, so that a cache hit is a copy and a few patches.
type entry struct {
	wire    []byte
	ttls    []int // offsets of the TTLs in wire
	stored  time.Time
	expires time.Time
}

// newEntry packs an upstream answer and works out how long it may be kept:
// the smallest TTL of its records, or for a negative answer (NXDOMAIN, or
// no records) the SOA's TTL bounded by its MINIMUM, as RFC 2308 says; a
// negative answer without an SOA, and any other rcode, is not kept.
func newEntry(r *mdns.Msg, now time.Time, maxTTL time.Duration) (*entry, error) {
	m := &mdns.Msg{MsgHdr: mdns.MsgHdr{Response: true, Rcode: r.Rcode, RecursionAvailable: true}, Compress: true}
	m.Question = []mdns.Question{r.Question[0]}
	m.Question[0].Name = strings.ToLower(m.Question[0].Name)
	m.Answer, m.Ns = r.Answer, r.Ns
	for _, rr := range r.Extra {
		if rr.Header().Rrtype != mdns.TypeOPT {
			m.Extra = append(m.Extra, rr)
		}
	}
	wire, err := m.Pack()
	if err != nil {
		return nil, err
	}
	offs, ok := ttlOffsets(wire)
	if !ok {
		return nil, errors.New("cannot walk the packed answer")
	}
	var ttl uint32
	switch {
	case m.Rcode == mdns.RcodeSuccess && len(m.Answer) > 0:
		ttl = ^uint32(0)
		for _, sec := range [][]mdns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range sec {
				ttl = min(ttl, rr.Header().Ttl)
			}
		}
	case m.Rcode == mdns.RcodeSuccess || m.Rcode == mdns.RcodeNameError:
		for _, rr := range m.Ns {
			if soa, ok := rr.(*mdns.SOA); ok {
				ttl = min(soa.Hdr.Ttl, soa.Minttl)
				break
			}
		}
	}
	keep := min(time.Duration(ttl)*time.Second, maxTTL)
	return &entry{wire: wire, ttls: offs, stored: now, expires: now.Add(keep)}, nil
}

// render writes the reply to q from e, each TTL counted down by the time e
// has been kept. It returns false when the reply does not fit the client's
// UDP size.
func (e *entry) render(out []byte, q *query, now time.Time, tcp bool, udpSize int) ([]byte, bool) {
	if len(e.wire) < hdrLen+len(q.name) {
		return nil, false
	}
	out = render(out, e.wire, q, true)
	if age := now.Sub(e.stored); age >= time.Second {
		sec := uint32(min(age/time.Second, 1<<32-1))
		for _, off := range e.ttls {
			ttl := binary.BigEndian.Uint32(out[off:])
			binary.BigEndian.PutUint32(out[off:], ttl-min(ttl, sec))
		}
	}
	if q.edns {
		binary.BigEndian.PutUint16(out[10:], binary.BigEndian.Uint16(out[10:])+1)
		out = appendOPT(out, udpSize, 0)
	}
	if !tcp && len(out) > q.size {
		return out, false
	}
	return out, true
}

// truncated is the reply for a client whose UDP size the answer exceeds:
// as many records as fit, and TC so that it asks again over TCP.
func (s *Server) truncated(out []byte, e *entry, q *query) []byte {
	m := new(mdns.Msg)
	if err := m.Unpack(e.wire); err != nil {
		return errReply(out, q, mdns.RcodeServerFailure, true, s.cfg.MaxUDPSize)
	}
	if q.edns {
		m.SetEdns0(uint16(s.cfg.MaxUDPSize), false)
	}
	m.Truncate(q.size)
	m.Truncated = true
	m.Compress = true
	w, err := m.Pack()
	if err != nil {
		return errReply(out, q, mdns.RcodeServerFailure, true, s.cfg.MaxUDPSize)
	}
	return render(out, w, q, true)
}

// cache holds forwarded answers by question. It is bounded: when full, an
// insert first drops expired entries it comes across, then any one entry.
type cache struct {
	mu  sync.RWMutex
	m   map[string]*entry
	max int
}

func newCache(size int) *cache { return &cache{m: map[string]*entry{}, max: size} }

func (c *cache) get(key []byte, now time.Time) *entry {
	if c.max <= 0 {
		return nil
	}
	c.mu.RLock()
	e := c.m[string(key)]
	c.mu.RUnlock()
	if e == nil || !now.Before(e.expires) {
		return nil
	}
	return e
}

func (c *cache) put(key string, e *entry) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[key]; !ok && len(c.m) >= c.max {
		seen := 0
		for k, old := range c.m {
			if !e.stored.Before(old.expires) {
				delete(c.m, k)
			}
			if seen++; seen >= 32 {
				break
			}
		}
		if len(c.m) >= c.max {
			for k := range c.m {
				delete(c.m, k)
				break
			}
		}
	}
	c.m[key] = e
}

// Len is the number of cached answers (for tests and metrics).
func (c *cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
