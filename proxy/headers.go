package proxy

import (
	"bytes"
	"iter"
	"math/rand/v2"
	"net"

	"github.com/valyala/fasthttp"
)

// Hop-by-hop headers (RFC 9110 7.6.1) that a proxy must not forward, besides
// those the Connection header names. Transfer-Encoding is not in the list:
// fasthttp reads it as framing and frames the forwarded message itself.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Upgrade", "Proxy-Authorization", "Proxy-Authenticate"}

// forwardHeaders turns the client's request headers into the backend's:
// hop-by-hop headers removed (but an upgrade kept for a tunnel),
// X-Forwarded-For appended, X-Real-IP, X-Forwarded-Proto and
// X-Forwarded-Host set, X-Request-Id added when absent. Host is left as the
// client sent it. It does not allocate.
func (p *Proxy) forwardHeaders(ctx *fasthttp.RequestCtx, upgrade bool) {
	h := &ctx.Request.Header
	var up [64]byte
	upv := up[:0]
	if upgrade {
		upv = append(upv, h.Peek("Upgrade")...)
	}
	if hasHopByHop(h.All()) {
		removeConnectionHeaders(h.Peek("Connection"), h.DelBytes)
		for _, k := range hopByHop {
			h.Del(k)
		}
	}
	if upgrade {
		h.Set("Connection", "Upgrade")
		h.SetBytesV("Upgrade", upv)
	}

	var ipb [64]byte
	ip := remoteIP(ipb[:0], ctx.RemoteAddr())
	var xb [256]byte
	xff := xb[:0]
	if prior := h.Peek("X-Forwarded-For"); len(prior) > 0 {
		xff = append(append(xff, prior...), ", "...)
	}
	xff = append(xff, ip...)
	h.SetBytesV("X-Forwarded-For", xff)
	h.SetBytesV("X-Real-IP", ip)
	if ctx.IsTLS() {
		h.Set("X-Forwarded-Proto", "https")
	} else {
		h.Set("X-Forwarded-Proto", "http")
	}
	h.SetBytesV("X-Forwarded-Host", h.Host())
	ctx.Request.UseHostHeader = true // no rewriting from the URI: the backend sees the client's Host
	if len(h.Peek("X-Request-Id")) == 0 {
		var id [32]byte
		h.SetBytesV("X-Request-Id", requestID(&id))
	}
}

// cleanResponse removes the backend's hop-by-hop headers; the connection to
// the client keeps its own keep-alive state (a backend closing its
// connection does not close the client's).
func cleanResponse(h *fasthttp.ResponseHeader) {
	if hasHopByHop(h.All()) {
		removeConnectionHeaders(h.Peek("Connection"), h.DelBytes)
		for _, k := range hopByHop {
			h.Del(k)
		}
	}
	h.ResetConnectionClose()
}

// hasHopByHop reports whether any header is hop-by-hop, so that the common
// request, which has none, is scanned once instead of once per name.
func hasHopByHop(all iter.Seq2[[]byte, []byte]) bool {
	for k := range all {
		for _, hk := range hopByHop {
			if len(k) == len(hk) && bytes.EqualFold(k, []byte(hk)) {
				return true
			}
		}
	}
	return false
}

// removeConnectionHeaders deletes the headers a Connection header names.
func removeConnectionHeaders(conn []byte, del func([]byte)) {
	for len(conn) > 0 {
		var tok []byte
		if i := bytes.IndexByte(conn, ','); i >= 0 {
			tok, conn = conn[:i], conn[i+1:]
		} else {
			tok, conn = conn, nil
		}
		tok = bytes.TrimSpace(tok)
		if len(tok) == 0 || bytes.EqualFold(tok, []byte("close")) || bytes.EqualFold(tok, []byte("keep-alive")) ||
			bytes.EqualFold(tok, []byte("upgrade")) {
			continue
		}
		del(tok)
	}
}

// isUpgrade reports whether the request asks to switch protocols (a
// WebSocket handshake): Connection names upgrade and Upgrade is set.
func isUpgrade(h *fasthttp.RequestHeader) bool {
	if up := h.Peek("Upgrade"); len(up) == 0 || bytes.EqualFold(bytes.TrimSpace(up), []byte("h2c")) {
		// h2c is the front door's to take or not (h2upgrade.go), never
		// the instance's: not taken, the request is served as HTTP/1.1.
		return false
	}
	conn := h.Peek("Connection")
	for len(conn) > 0 {
		var tok []byte
		if i := bytes.IndexByte(conn, ','); i >= 0 {
			tok, conn = conn[:i], conn[i+1:]
		} else {
			tok, conn = conn, nil
		}
		if bytes.EqualFold(bytes.TrimSpace(tok), []byte("upgrade")) {
			return true
		}
	}
	return false
}

func remoteIP(dst []byte, a net.Addr) []byte {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap().AppendTo(dst)
	}
	return append(dst, a.String()...)
}

const hexDigits = "0123456789abcdef"

// requestID fills id with 128 random bits in hex.
func requestID(id *[32]byte) []byte {
	for half := 0; half < 2; half++ {
		v := rand.Uint64()
		for i := 0; i < 16; i++ {
			id[half*16+i] = hexDigits[v&15]
			v >>= 4
		}
	}
	return id[:]
}
