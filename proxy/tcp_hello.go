package proxy

import (
	"errors"
	"strings"
)

// maxHelloBytes bounds what the SNI peek reads before it gives up: a
// ClientHello fills one 16 KiB record at most in practice (post-quantum key
// shares make it about 2 KiB); the TLS records' headers come on top.
const maxHelloBytes = 16<<10 + 4*5

var (
	errNotTLS   = errors.New("not a TLS handshake")
	errBadHello = errors.New("malformed ClientHello")
)

// parseClientHello reads the server name from the start of a TLS
// connection, b: one or more handshake records carrying a ClientHello. It
// returns need > 0 when b is a valid prefix that ends too soon (read at
// least need more bytes and call again), the name ("" for a ClientHello
// without SNI) when the ClientHello is whole, or an error. The name is
// lower-cased without a trailing dot; a name that is not a plausible host
// is an error, so that it never reaches a log line or a lookup unchecked.
func parseClientHello(b []byte) (name string, need int, err error) {
	// Gather the handshake message across records without copying while
	// it sits in one record, the usual case.
	var msg []byte
	copied := false
	for rest := b; ; {
		if len(rest) < 5 {
			return "", 5 - len(rest), nil
		}
		if rest[0] != 22 || rest[1] != 3 {
			return "", 0, errNotTLS
		}
		n := int(rest[3])<<8 | int(rest[4])
		if n == 0 || n > 16<<10 {
			return "", 0, errBadHello
		}
		if len(rest) < 5+n {
			return "", 5 + n - len(rest), nil
		}
		frag := rest[5 : 5+n]
		rest = rest[5+n:]
		if msg == nil {
			msg = frag
		} else {
			if !copied {
				msg = append([]byte(nil), msg...)
				copied = true
			}
			msg = append(msg, frag...)
		}
		if len(msg) >= 4 {
			if msg[0] != 1 { // client_hello
				return "", 0, errBadHello
			}
			body := int(msg[1])<<16 | int(msg[2])<<8 | int(msg[3])
			if body > maxHelloBytes {
				return "", 0, errBadHello
			}
			if len(msg) >= 4+body {
				name, err := helloServerName(msg[4 : 4+body])
				return name, 0, err
			}
			if len(rest) == 0 {
				// At least the next record's header; its length is
				// learnt then.
				return "", 5 + min(4+body-len(msg), 16<<10), nil
			}
		} else if len(rest) == 0 {
			return "", 5, nil
		}
	}
}

// helloServerName walks a ClientHello's body (RFC 8446 4.1.2) to the
// server_name extension (RFC 6066 3).
func helloServerName(h []byte) (string, error) {
	r := reader(h)
	if !r.skip(2+32) || !r.skipVec(1) || !r.skipVec(2) || !r.skipVec(1) {
		return "", errBadHello
	}
	if len(r) == 0 {
		return "", nil // no extensions (TLS 1.0-style hello)
	}
	exts, ok := r.vec(2)
	if !ok || len(r) != 0 {
		return "", errBadHello
	}
	for len(exts) > 0 {
		typ, ok := exts.u16()
		if !ok {
			return "", errBadHello
		}
		data, ok := exts.vec(2)
		if !ok {
			return "", errBadHello
		}
		if typ != 0 {
			continue
		}
		list, ok := data.vec(2)
		if !ok || len(data) != 0 {
			return "", errBadHello
		}
		for len(list) > 0 {
			kind := list[0]
			list = list[1:]
			n, ok := list.vec(2)
			if !ok {
				return "", errBadHello
			}
			if kind == 0 { // host_name
				return cleanServerName(string(n))
			}
		}
		return "", nil
	}
	return "", nil
}

// cleanServerName checks a host_name: letters, digits, -, _ and dots, up
// to 253 bytes; lower-cased, without a trailing dot.
func cleanServerName(s string) (string, error) {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return "", errBadHello
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return "", errBadHello
		}
	}
	return strings.ToLower(s), nil
}

// reader is a cursor over a ClientHello.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *reader) u16() (int, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := int((*r)[0])<<8 | int((*r)[1])
	*r = (*r)[2:]
	return v, true
}

// vec reads a vector with a length prefix of lenBytes (1 or 2) bytes.
func (r *reader) vec(lenBytes int) (reader, bool) {
	if len(*r) < lenBytes {
		return nil, false
	}
	n := int((*r)[0])
	if lenBytes == 2 {
		n = n<<8 | int((*r)[1])
	}
	*r = (*r)[lenBytes:]
	if len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *reader) skipVec(lenBytes int) bool { _, ok := r.vec(lenBytes); return ok }
