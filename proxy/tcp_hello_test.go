package proxy

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// realHello is the ClientHello Go's TLS client sends for name ("" sends
// none), read off a pipe.
func realHello(t testing.TB, name string) []byte {
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tc := tls.Client(c, &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Handshake() // fails when s closes: only its first flight is wanted
		c.Close()
	}()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	hello, got, err := peekHello(s, 5*time.Second)
	if err != nil || got != strings.ToLower(name) {
		t.Fatalf("peeking a real ClientHello for %q: %q, %v", name, got, err)
	}
	return hello
}

func TestParseClientHello(t *testing.T) {
	h := realHello(t, "Db.Example.com")
	for i := 0; i < len(h); i++ {
		name, need, err := parseClientHello(h[:i])
		if err != nil || need == 0 || name != "" {
			t.Fatalf("prefix of %d bytes: %q, need %d, %v; want more wanted", i, name, need, err)
		}
	}
	// The same hello split over two records.
	body := h[5:]
	split := append([]byte{22, 3, 1, 0, 10}, body[:10]...)
	split = append(split, 22, 3, 1, byte((len(body)-10)>>8), byte(len(body)-10))
	split = append(split, body[10:]...)
	for _, b := range [][]byte{h, split} {
		if name, need, err := parseClientHello(b); name != "db.example.com" || need != 0 || err != nil {
			t.Fatalf("%q, %d, %v", name, need, err)
		}
	}
	if name, _, err := parseClientHello(realHello(t, "")); name != "" || err != nil {
		t.Fatalf("no SNI: %q, %v", name, err)
	}
	for _, bad := range []string{"GET / HTTP/1.1\r\n", "\x16\x03\x01\x00\x00", "\x16\x03\x01\x00\x04\x02\x00\x00\x00"} {
		if _, _, err := parseClientHello([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// FuzzClientHello feeds the SNI peek's parser arbitrary bytes: it must not
// panic, must ask for a bounded number of bytes, must return only clean
// names, and must agree with itself on a prefix of a complete input.
func FuzzClientHello(f *testing.F) {
	// Real ClientHellos of Go's client are in testdata (seed0 names
	// db.example.com, seed1 none): TLS 1.2 ones, about 250 bytes, as the
	// engine minimizes a 1.7 KiB TLS 1.3 hello (post-quantum key share)
	// too slowly to fuzz in .ci/fuzz's seconds. TestParseClientHello
	// covers that one.
	f.Add([]byte("\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, need, err := parseClientHello(b)
		if need < 0 || need > maxHelloBytes+5 {
			t.Fatalf("need %d", need)
		}
		if err == nil && need == 0 && name != "" {
			if n, err := cleanServerName(name); err != nil || n != name {
				t.Fatalf("name %q not clean", name)
			}
		}
		if err == nil && need == 0 && len(b) > 0 {
			// Any shorter prefix is incomplete or, at worst, an error;
			// never a different name.
			n2, need2, err2 := parseClientHello(b[:len(b)-1])
			if err2 == nil && need2 == 0 && n2 != name {
				t.Fatalf("prefix named %q, whole input %q", n2, name)
			}
		}
	})
}

// FuzzParseTCPTag: a tag from the catalog never panics the parser, and a
// route it accepts passes Validate with its service set.
func FuzzParseTCPTag(f *testing.F) {
	for _, s := range []string{"urlprefix-:5432 proto=tcp", "urlprefix-db.example.com proto=tcp+sni", "urlprefix-[::1]:1 proto=tcp", "urlprefix-/api"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tag string) {
		r, ok, err := ParseTCPTag(tag, "127.0.0.1")
		if !ok || err != nil {
			return
		}
		r.Service = "s"
		if err := r.Validate(); err != nil {
			t.Fatalf("%q: accepted, then %v", tag, err)
		}
		if _, isHTTP, _ := ParseTag(tag); isHTTP {
			t.Fatalf("%q read as both a TCP and an HTTP route", tag)
		}
	})
}
