//go:build linux

package proxy

import (
	"bytes"
	"errors"
	"time"

	"github.com/valyala/fasthttp"
)

// Reading an instance's answer on the event loop (evloop_fast_linux.go).

// The results of complete.
const (
	respMore = iota
	respDone
	respStream
)

// complete parses what fr.rb holds of the response: the head once it is
// all there, then whether the body is.
func (l *loop) complete(fr *fastReq) (state int, extra bool, err error) {
	rb := fr.rb
	resp := &fr.ctx.Response
	if fr.head == 0 {
		i := bytes.Index(rb, crlf2)
		if i < 0 {
			if len(rb) >= l.fast.cfg.MaxResponseHeaderSize {
				return 0, false, errRespTooLarge
			}
			return respMore, false, nil
		}
		resp.Reset()
		resp.Header.SetNoDefaultContentType(true)
		resp.Header.DisableNormalizing()
		f := &l.fast
		f.brd.Reset(rb[:i+4])
		f.br.Reset(&f.brd)
		err := resp.Header.Read(f.br)
		f.br.Reset(nil)
		if err != nil {
			return 0, false, err
		}
		fr.head = i + 4
		sc := resp.Header.StatusCode()
		switch {
		case sc < 200:
			return respStream, false, nil
		case fr.ctx.Request.Header.IsHead() || sc == fasthttp.StatusNoContent || sc == fasthttp.StatusNotModified:
			resp.SkipBody = fr.ctx.Request.Header.IsHead()
			fr.body = 0
		default:
			switch cl := resp.Header.ContentLength(); {
			case cl >= 0:
				if fr.head+cl > fastRespMax {
					return respStream, false, nil
				}
				fr.body = cl
			case cl == -1:
				fr.body = -1
			default:
				return respStream, false, nil // to the connection's close
			}
		}
	}
	if fr.body >= 0 {
		end := fr.head + fr.body
		if len(rb) < end {
			return respMore, false, nil
		}
		if fr.body > 0 {
			resp.SetBody(rb[fr.head:end])
		}
		return respDone, len(rb) > end, nil
	}
	// Chunked: all chunks there, and no trailer?
	body := resp.BodyWriter()
	resp.ResetBody()
	pos := fr.head
	for {
		j := bytes.Index(rb[pos:], crlf2[:2])
		if j < 0 {
			if len(rb) >= fastRespMax {
				return respStream, false, nil
			}
			return respMore, false, nil
		}
		line := rb[pos : pos+j]
		if k := bytes.IndexByte(line, ';'); k >= 0 {
			line = line[:k]
		}
		size, ok := parseHex(bytes.TrimRight(line, " \t"))
		if !ok {
			return 0, false, errors.New("proxy: bad chunk size from backend")
		}
		pos += j + 2
		if size == 0 {
			if len(rb) < pos+2 {
				return respMore, false, nil
			}
			if rb[pos] != '\r' || rb[pos+1] != '\n' {
				return respStream, false, nil // trailers
			}
			pos += 2
			resp.Header.SetContentLength(len(resp.Body()))
			return respDone, len(rb) > pos, nil
		}
		if len(rb) < pos+size+2 {
			if pos+size+2 > fastRespMax {
				return respStream, false, nil
			}
			return respMore, false, nil
		}
		if rb[pos+size] != '\r' || rb[pos+size+1] != '\n' {
			return 0, false, errors.New("proxy: bad chunk from backend")
		}
		body.Write(rb[pos : pos+size])
		pos += size + 2
	}
}

// parseHex reads a chunk size.
func parseHex(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 8 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | int(c-'0')
		case c >= 'a' && c <= 'f':
			n = n<<4 | int(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n<<4 | int(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// upDone: the backend answered fr's request in full. Its connection goes
// back to the pool (unless either side ends it) and the response to the
// client.
func (l *loop) upDone(fr *fastReq, extra bool) {
	l.untrack(fr)
	uc := fr.up
	uc.fr, fr.up = nil, nil
	resp := &fr.ctx.Response
	if extra || resp.Header.ConnectionClose() || fr.ctx.Request.Header.ConnectionClose() || l.fast.closing.Load() {
		l.closeUp(uc)
	} else {
		uc.idleSince = time.Now().UnixNano()
		l.fast.idle[uc.b] = append(l.fast.idle[uc.b], uc)
	}
	b := fr.tried[fr.n-1]
	b.Succeed()
	cleanResponse(&resp.Header)
	l.p.access(&fr.ctx, fr.st.origURI, fr.st.start, fr.st.r, b, fr.n)
	if l.respond(fr, b) {
		l.resume(fr)
	}
}
