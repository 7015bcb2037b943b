package proxy

import (
	"testing"

	"github.com/valyala/fasthttp"
)

// TestAbsoluteForm: a request line with an absolute URI (RFC 9112 3.2.2)
// is routed by the URI's host, which overrides the Host header, and goes
// to the instance in origin form with Host set to that authority.
func TestAbsoluteForm(t *testing.T) {
	shop, root := newBackend(t, "shop"), newBackend(t, "root")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{
			{Host: "shop.example.com", Service: "shop"},
			{Path: "/", Service: "root"},
		}
	})
	e.register("shop-1", "shop", shop.addr, 1)
	e.register("root-1", "root", root.addr, 1)

	for _, c := range []struct {
		raw              string
		name, uri, host  string
		forwardedHostHdr string
	}{
		{"GET http://shop.example.com/x?y=1 HTTP/1.1\r\nHost: other.example.com\r\n\r\n", "shop", "/x?y=1", "shop.example.com", "shop.example.com"},
		{"GET HTTP://Shop.Example.com:8080/a/b HTTP/1.1\r\nHost: other.example.com\r\n\r\n", "shop", "/a/b", "Shop.Example.com:8080", "Shop.Example.com:8080"},
		{"GET https://shop.example.com HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", "shop", "/", "shop.example.com", "shop.example.com"},
		{"GET http://shop.example.com?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", "shop", "/?q=1", "shop.example.com", "shop.example.com"},
		{"GET http://other.example.com/shop HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", "root", "/shop", "other.example.com", "other.example.com"},
		{"GET /plain HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", "shop", "/plain", "shop.example.com", "shop.example.com"},
	} {
		code, body := rawGet(t, e.addr, c.raw)
		if code != 200 {
			t.Errorf("%q: %d %s", c.raw, code, body)
			continue
		}
		got := decode(t, body)
		if got.Name != c.name || got.URI != c.uri || got.Host != c.host || got.Header.Get("X-Forwarded-Host") != c.forwardedHostHdr {
			t.Errorf("%q: went to %s as %q with Host %q (X-Forwarded-Host %q); want %s as %q with Host %q",
				c.raw, got.Name, got.URI, got.Host, got.Header.Get("X-Forwarded-Host"), c.name, c.uri, c.host)
		}
	}
	for _, raw := range []string{
		"GET http://user:pw@shop.example.com/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
		"GET http:///x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
		"GET ftp://shop.example.com/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
		"GET x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
	} {
		if code, body := rawGet(t, e.addr, raw); code != 400 {
			t.Errorf("%q: %d %s, want 400", raw, code, body)
		}
	}
}

func TestAbsoluteFormAllocsNothing(t *testing.T) {
	var h fasthttp.RequestHeader
	fill := func() {
		h.SetHost("other.example.com")
		h.SetRequestURI("http://shop.example.com/api/users/7?x=1")
		if !absoluteForm(&h) || string(h.Host()) != "shop.example.com" || string(h.RequestURI()) != "/api/users/7?x=1" {
			t.Fatalf("absoluteForm: %q %q", h.Host(), h.RequestURI())
		}
	}
	fill()
	if n := testing.AllocsPerRun(1000, fill); n != 0 {
		t.Errorf("absoluteForm allocates %v times", n)
	}
}

// FuzzAbsoluteForm: request targets come from the network; whatever
// absoluteForm accepts leaves an origin-form URI and a valid Host.
func FuzzAbsoluteForm(f *testing.F) {
	for _, s := range []string{"/x", "http://a.example.com/x?y", "HTTPS://a:8080", "http://a?q", "http://", "http://u@h/", "*", "a.example.com:443"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		var h fasthttp.RequestHeader
		h.SetHost("before.example.com")
		h.SetRequestURI(uri)
		if !absoluteForm(&h) {
			return
		}
		if got := h.RequestURI(); len(got) == 0 || got[0] != '/' {
			t.Fatalf("absoluteForm(%q) left the URI %q", uri, got)
		}
		if !validHost(h.Host()) {
			t.Fatalf("absoluteForm(%q) set the Host %q", uri, h.Host())
		}
	})
}
