package proxy

import (
	"bytes"
	"errors"
	"io"
)

// Request smuggling (RFC 9112 section 11.2) works when a proxy and the
// backend behind it disagree about where a request ends. fasthttp already
// refuses most malformed framing with 400: two Content-Length headers, a
// Content-Length that is not a plain decimal, a Transfer-Encoding other
// than chunked or identity or sent twice, Transfer-Encoding in HTTP/1.0,
// whitespace before a header's colon, control characters in a header, bad
// chunk sizes. What it accepts and repairs instead, badFraming refuses, so
// that nothing ambiguous is forwarded even in repaired form:
//
//   - Content-Length together with Transfer-Encoding (fasthttp drops the
//     Content-Length; RFC 9112 section 6.3 allows that, but a request that
//     carries both is a smuggling attempt, not a client bug);
//   - Transfer-Encoding other than exactly "chunked" (fasthttp reads
//     "identity", which RFC 9112 removed, as no body at all);
//   - obs-fold, a header line that begins with a space or tab (RFC 9112
//     section 5.2 lets a proxy refuse it; fasthttp would join the lines);
//   - a header line ended by a bare LF (section 2.2 lets a recipient accept
//     it; a backend that does not would see one long line).
//
// A bare LF ending the request line itself is not seen here (fasthttp keeps
// only the header block); it is harmless because the request line is
// written anew, with CRLF, when the request is forwarded.

// badFraming reports whether raw, the header block as the client sent it
// (RequestHeader.RawHeaders), is framed ambiguously. It scans raw once and
// does not allocate.
func badFraming(raw []byte) bool {
	var te, cl bool
	for len(raw) > 0 {
		if raw[0] == ' ' || raw[0] == '\t' {
			return true // obs-fold
		}
		end := bytes.IndexByte(raw, '\n')
		if end < 0 {
			break
		}
		if end == 0 || raw[end-1] != '\r' {
			return true // bare LF
		}
		line := raw[:end-1]
		raw = raw[end+1:]
		if len(line) == 0 {
			continue
		}
		switch line[0] | 0x20 {
		case 't':
			if v, ok := fieldValue(line, "transfer-encoding:"); ok {
				if te || !bytes.EqualFold(v, []byte("chunked")) {
					return true
				}
				te = true
			}
		case 'c':
			if _, ok := fieldValue(line, "content-length:"); ok {
				cl = true
			}
		}
	}
	return te && cl
}

// fieldValue returns the value of a header line if its name (with the
// colon, lower case) is name, without the spaces and tabs around it.
func fieldValue(line []byte, name string) ([]byte, bool) {
	if len(line) < len(name) || !bytes.EqualFold(line[:len(name)], []byte(name)) {
		return nil, false
	}
	return bytes.Trim(line[len(name):], " \t"), true
}

var errBodyLimit = errors.New("proxy: request body too large")

// clientBody wraps a streamed request body: it fails a chunked body once
// it grows past the limit, and it remembers an error reading from the
// client (a malformed chunk, a body cut short, a timeout), so that the
// failure is answered as the client's (400, 408, 413) and is not held
// against the backend, which a client could otherwise take out of rotation
// at will.
type clientBody struct {
	r    io.Reader
	n    int64 // bytes still allowed
	left int64 // bytes of a Content-Length body still to come; -1: chunked
	err  error // the first error other than io.EOF
}

func (l *clientBody) Read(p []byte) (int, error) {
	// Read one byte more than is left, to tell a body that ends at the
	// limit from one that goes past it.
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.left >= 0 {
		l.left -= int64(n)
	}
	switch {
	case l.n < 0:
		n = max(n+int(l.n), 0) // the byte past the limit is not passed on
		err = errBodyLimit
	case err == io.EOF && l.left > 0:
		err = io.ErrUnexpectedEOF // the client went away before its Content-Length
	}
	if err != nil && err != io.EOF && l.err == nil {
		l.err = err
	}
	return n, err
}

func (p *Proxy) putBody(b *clientBody) {
	*b = clientBody{} // let go of the request's stream
	p.bodies.Put(b)
}
