package dns

import (
	"encoding/binary"
	"strings"

	mdns "github.com/miekg/dns"
)

// Header bits, as in RFC 1035 section 4.1.1.
const (
	hdrLen   = 12
	flagQR   = 0x8000
	flagAA   = 0x0400
	flagTC   = 0x0200
	flagRD   = 0x0100
	flagRA   = 0x0080
	flagCD   = 0x0010
	maskCode = 0x000f
	optLen   = 11  // an OPT RR without options
	keyCap   = 258 // a wire name (at most 255) and the type
)

// query is one question as pier handles it. The fast path fills it from the
// packet without unpacking; the slow path from a parsed mdns.Msg.
type query struct {
	id     uint16
	opcode int
	flags  uint16 // the request's flags; RD and CD are echoed
	name   []byte // the question name in wire form, as sent (case kept); nil: no question
	key    []byte // the name lowercased, then the type: the key of both answer caches
	qtype  uint16
	qclass uint16
	edns   bool
	size   int // the reply size the client takes over UDP: 512 without EDNS
	domOff int // where Domain starts in key, or -1 when the name is not under Domain

	kind uint8 // how it was answered (metrics); set by reply
}

// clone copies q's slices, for a goroutine that outlives the read buffer.
func (q query) clone() query {
	q.name = append([]byte(nil), q.name...)
	q.key = append([]byte(nil), q.key...)
	return q
}

// parseQuery reads the common query straight from the packet: a query with
// one question of class IN, no other records but an optional EDNS(0) OPT,
// no compression. It returns false for anything else, which the slow path
// then parses in full. The key is written into keybuf.
func parseQuery(pkt []byte, keybuf *[keyCap]byte, domain []byte, q *query) bool {
	if len(pkt) < hdrLen+5 {
		return false
	}
	flags := binary.BigEndian.Uint16(pkt[2:])
	if flags&(flagQR|flagTC|0x7800) != 0 { // a response, truncated, or an opcode other than QUERY
		return false
	}
	if pkt[4] != 0 || pkt[5] != 1 || pkt[6]|pkt[7]|pkt[8]|pkt[9]|pkt[10] != 0 || pkt[11] > 1 {
		return false
	}
	off, n := hdrLen, 0
	for {
		if off >= len(pkt) {
			return false
		}
		l := int(pkt[off])
		if l == 0 {
			break
		}
		if l > 63 || off+1+l >= len(pkt) || n+1+l > 254 {
			return false
		}
		keybuf[n] = byte(l)
		n++
		for _, c := range pkt[off+1 : off+1+l] {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			keybuf[n] = c
			n++
		}
		off += 1 + l
	}
	keybuf[n] = 0
	n++
	off++
	q.name = pkt[hdrLen:off]
	if off+4 > len(pkt) {
		return false
	}
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	q.qclass = binary.BigEndian.Uint16(pkt[off+2:])
	if q.qclass != mdns.ClassINET || isSpecialType(q.qtype) {
		return false
	}
	off += 4
	q.edns, q.size = false, 512
	if pkt[11] == 1 {
		// OPT: root name, type 41, class = payload size, TTL = extended
		// rcode, version, flags; then rdlength and options. The options are
		// ignored, but whether they are well formed is the slow path's to
		// judge (it refuses a malformed one with FORMERR): only options with
		// no inner structure (a cookie, as dig sends, padding, NSID and the
		// DNSSEC algorithm lists) stay on the fast path.
		if off+optLen > len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != mdns.TypeOPT || pkt[off+6] != 0 {
			return false
		}
		q.edns = true
		q.size = max(512, int(binary.BigEndian.Uint16(pkt[off+3:])))
		end := off + optLen + int(binary.BigEndian.Uint16(pkt[off+9:]))
		if end != len(pkt) {
			return false
		}
		for o := off + optLen; o < end; {
			if o+4 > end || !opaqueOption(binary.BigEndian.Uint16(pkt[o:])) {
				return false
			}
			o += 4 + int(binary.BigEndian.Uint16(pkt[o+2:]))
			if o > end {
				return false
			}
		}
		off = end
	}
	if off != len(pkt) {
		return false
	}
	binary.BigEndian.PutUint16(keybuf[n:], q.qtype)
	q.key = keybuf[:n+2]
	q.id = binary.BigEndian.Uint16(pkt)
	q.opcode = 0
	q.flags = flags
	q.domOff = underDomain(q.key[:n], domain)
	return true
}

// opaqueOption reports the EDNS options whose data any bytes make valid.
func opaqueOption(code uint16) bool {
	switch code {
	case mdns.EDNS0NSID, mdns.EDNS0DAU, mdns.EDNS0DHU, mdns.EDNS0N3U, mdns.EDNS0COOKIE, mdns.EDNS0PADDING:
		return true
	}
	return false
}

// isSpecialType reports the types the fast path leaves to the slow one:
// zone transfers, meta types and the pseudo types that are never questions.
func isSpecialType(t uint16) bool {
	switch t {
	case mdns.TypeAXFR, mdns.TypeIXFR, mdns.TypeOPT, mdns.TypeTSIG, mdns.TypeTKEY, mdns.TypeMAILA, mdns.TypeMAILB, mdns.TypeNone:
		return true
	}
	return false
}

// underDomain returns the offset in the wire name where domain (lowercase
// wire form) starts at a label boundary, or -1.
func underDomain(name, domain []byte) int {
	start := len(name) - len(domain)
	if start < 0 {
		return -1
	}
	for off := 0; off < len(name); off += 1 + int(name[off]) {
		if off == start {
			if string(name[off:]) == string(domain) {
				return off
			}
			return -1
		}
		if off > start || name[off] == 0 {
			return -1
		}
	}
	return -1
}

// keyFromName builds the cache key of a name in wire form.
func keyFromName(dst *[keyCap]byte, name []byte, qtype uint16) []byte {
	n := copy(dst[:], name)
	b := dst[:n]
	// Lowercase only the label bytes: a length byte is below 64, never a letter.
	for i := range b {
		if c := b[i]; 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	binary.BigEndian.PutUint16(dst[n:], qtype)
	return dst[:n+2]
}

// labels splits a lowercase wire name (without the root) into its labels.
func labels(name []byte) []string {
	var out []string
	for off := 0; off < len(name) && name[off] != 0; off += 1 + int(name[off]) {
		out = append(out, string(name[off+1:off+1+int(name[off])]))
	}
	return out
}

// render copies a packed reply into out and makes it the reply to q: the
// request's ID, RD and CD, RA as given, and the question name as the client
// wrote it (the packed reply holds it lowercased, at the same length, and
// its other names point there).
func render(out, wire []byte, q *query, ra bool) []byte {
	out = append(out[:0], wire...)
	binary.BigEndian.PutUint16(out, q.id)
	f := binary.BigEndian.Uint16(out[2:])&(flagAA|flagTC|maskCode) | flagQR | q.flags&(flagRD|flagCD)
	if ra {
		f |= flagRA
	}
	binary.BigEndian.PutUint16(out[2:], f)
	copy(out[hdrLen:], q.name)
	return out
}

// errReply writes a reply with no records: the header, the question if q
// has one, and an OPT when the query had one. rcode may be an extended
// rcode (above 15), which needs EDNS.
func errReply(out []byte, q *query, rcode int, ra bool, udpSize int) []byte {
	out = append(out[:0], make([]byte, hdrLen)...)
	binary.BigEndian.PutUint16(out, q.id)
	f := flagQR | uint16(q.opcode&0xf)<<11 | q.flags&(flagRD|flagCD) | uint16(rcode&maskCode)
	if ra {
		f |= flagRA
	}
	binary.BigEndian.PutUint16(out[2:], f)
	if q.name != nil {
		out[5] = 1
		out = append(out, q.name...)
		out = binary.BigEndian.AppendUint16(out, q.qtype)
		out = binary.BigEndian.AppendUint16(out, q.qclass)
	}
	if q.edns {
		out[11] = 1
		out = appendOPT(out, udpSize, uint8(rcode>>4))
	}
	return out
}

// appendOPT appends an OPT RR without options.
func appendOPT(out []byte, size int, extRcode uint8) []byte {
	out = append(out, 0)
	out = binary.BigEndian.AppendUint16(out, mdns.TypeOPT)
	out = binary.BigEndian.AppendUint16(out, uint16(size))
	out = append(out, extRcode, 0, 0, 0) // extended rcode, version 0, no flags
	return binary.BigEndian.AppendUint16(out, 0)
}

// ttlOffsets returns the offset of the TTL of every record of a packed
// message except OPT (whose TTL field is not a TTL).
func ttlOffsets(msg []byte) ([]int, bool) {
	if len(msg) < hdrLen {
		return nil, false
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	rrs := int(binary.BigEndian.Uint16(msg[6:])) + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	off := hdrLen
	for range qd {
		if off = skipName(msg, off); off < 0 || off+4 > len(msg) {
			return nil, false
		}
		off += 4
	}
	offs := make([]int, 0, rrs)
	for range rrs {
		if off = skipName(msg, off); off < 0 || off+10 > len(msg) {
			return nil, false
		}
		if binary.BigEndian.Uint16(msg[off:]) != mdns.TypeOPT {
			offs = append(offs, off+4)
		}
		off += 10 + int(binary.BigEndian.Uint16(msg[off+8:]))
	}
	return offs, off == len(msg)
}

// skipName returns the offset after the name at off, or -1.
func skipName(msg []byte, off int) int {
	for off < len(msg) {
		c := msg[off]
		switch {
		case c == 0:
			return off + 1
		case c&0xc0 == 0xc0:
			if off+2 > len(msg) {
				return -1
			}
			return off + 2
		case c&0xc0 != 0:
			return -1
		}
		off += 1 + int(c)
	}
	return -1
}

// lowerFQDN is the canonical text form of a name in a question.
func lowerFQDN(s string) string { return strings.ToLower(mdns.Fqdn(s)) }
