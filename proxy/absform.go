package proxy

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// absoluteForm turns a request in absolute form (GET http://host/x,
// RFC 9112 3.2.2) into origin form: the URI's authority replaces the Host
// header, as the RFC requires of a server that receives one, and the
// request URI becomes the path and query, which is what the route lookup
// and the instance expect (an instance behind pier is an origin server,
// and some refuse absolute form). It reports false for a URI that is
// neither form, for the caller to answer 400. It does not allocate once
// the request's buffers have grown.
func absoluteForm(h *fasthttp.RequestHeader) bool {
	uri := h.RequestURI()
	if len(uri) > 0 && uri[0] == '/' {
		return true // origin form, the common case
	}
	var rest []byte
	switch {
	case len(uri) >= 7 && bytes.EqualFold(uri[:7], []byte("http://")):
		rest = uri[7:]
	case len(uri) >= 8 && bytes.EqualFold(uri[:8], []byte("https://")):
		rest = uri[8:]
	default:
		return false // authority form (CONNECT) and asterisk form (OPTIONS *) are not routed
	}
	end := len(rest)
	if i := bytes.IndexAny(rest, "/?"); i >= 0 {
		end = i
	}
	authority, target := rest[:end], rest[end:]
	// userinfo is deprecated in http URIs (RFC 9110 4.2.4) and would make
	// the Host header carry credentials.
	if len(authority) == 0 || !validHost(authority) {
		return false
	}
	h.SetHostBytes(authority)
	var buf [512]byte
	t := buf[:0]
	if len(target) == 0 || target[0] != '/' {
		t = append(t, '/') // http://host and http://host?q have the path /
	}
	t = append(t, target...)
	h.SetRequestURIBytes(t)
	return true
}
