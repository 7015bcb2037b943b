package proxy

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

func TestParseTCPRoute(t *testing.T) {
	good := map[string]TCPRoute{
		"listen: \":5432\"\nservice: pg\n":                           {Listen: ":5432", Service: "pg"},
		`{"sni":"DB.example.com","service":"db"}`:                    {SNI: "db.example.com", Service: "db"},
		"listen: 127.0.0.1:6379\nservice: redis\nidle_timeout: 1h\n": {Listen: "127.0.0.1:6379", Service: "redis", IdleTimeout: time.Hour},
	}
	for in, want := range good {
		got, err := ParseTCPRoute([]byte(in))
		if err != nil || got != want {
			t.Errorf("ParseTCPRoute(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, field := range map[string]string{
		"":                            "empty",
		"[1, 2]":                      "mapping",
		"listen: \":5432\"\n":         "service",
		"service: pg\n":               "listen",
		"listen: nope\nservice: pg\n": "listen",
		"listen: db.example.com:5432\nservice: pg":           "listen",
		"listen: \":5432\"\nservice: pg\nbogus: 1":           "bogus",
		"listen: \":5432\"\nservice: pg\nidle_timeout: soon": "idle_timeout",
		"sni: \"-x..y\"\nservice: pg":                        "sni",
	} {
		if _, err := ParseTCPRoute([]byte(in)); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("ParseTCPRoute(%q) = %v; want an error naming %s", in, err, field)
		}
	}
}

// TestTCPRouteFromKV: a TCP route written under pier/tcp-routes/ opens its
// listener and carries an echo's bytes; a bad value, or one that clashes
// with the config, is shown with its error and not served; a KV route beats
// a tag for the same listener; deleting the key closes the listener and
// drains its open connections (cut after the route's drain_timeout, left
// alone without one).
func TestTCPRouteFromKV(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{TagHost: "127.0.0.1", Routes: []TCPRoute{{Listen: "127.0.0.3:0", Service: "echo"}}})
	a, b := newEchoServer(t, "A", nil), newEchoServer(t, "B", nil)
	e.register("a", "echo", a.addr, 1)
	// The key waited for (its listener) is written last: once it is
	// served, so are the others.
	e.env.reg.KVPut(KVTCPRoutePrefix+"broken", []byte("listen: nope\nservice: echo\n"), 0, nil)
	e.env.reg.KVPut(KVTCPRoutePrefix+"clash", []byte("listen: 127.0.0.3:0\nservice: other\n"), 0, nil)
	e.env.reg.KVPut(KVTCPRoutePrefix+"db", []byte("sni: db.example.com\nservice: echo\n"), 0, nil)
	e.env.reg.KVPut(KVTCPRoutePrefix+"echo-cut", []byte(`{"listen": "127.0.0.2:0", "service": "echo", "drain_timeout": "300ms"}`), 0, nil)
	e.env.reg.KVPut(KVTCPRoutePrefix+"echo", []byte("listen: 127.0.0.1:0\nservice: echo\n"), 0, nil)
	e.register("b", "tagged", b.addr, 1, "urlprefix-:0 proto=tcp") // 127.0.0.1:0, as the KV route echo
	e.synced()

	keep, name := dialEcho(t, e.addr("127.0.0.1:0"))
	if name != "A" {
		t.Fatalf("the KV route's listener answered by %q; want A (the KV route wins over the tag)", name)
	}
	roundTrip(t, keep, "through a KV route\n")
	cut, _ := dialEcho(t, e.addr("127.0.0.2:0"))
	roundTrip(t, cut, "x\n")
	if rt := (*e.tcp.sni.Load())["db.example.com"]; rt == nil || rt.Source != "kv" {
		t.Errorf("the KV sni route is not on the TLS listener: %+v", rt)
	}
	var shown []string
	for _, ri := range e.tcp.Routes() {
		shown = append(shown, ri.Source+" "+ri.Key+" "+ri.Service+" "+ri.Error)
	}
	want := []string{
		"kv pier/tcp-routes/echo echo ",
		"kv pier/tcp-routes/echo-cut echo ",
		"config  echo ",
		"kv pier/tcp-routes/db echo ",
		`kv pier/tcp-routes/broken  listen "nope": want host:port or :port`,
		`kv pier/tcp-routes/clash  listen "127.0.0.3:0": already a route of the config file`,
	}
	if strings.Join(shown, "\n") != strings.Join(want, "\n") {
		t.Errorf("Routes():\n%s\nwant:\n%s", strings.Join(shown, "\n"), strings.Join(want, "\n"))
	}

	// A changed value keeps its listener (same port) and sends new
	// connections by the new value; the old route's connections drain.
	cutAddr := e.tcp.Addrs()["127.0.0.2:0"]
	e.env.reg.KVPut(KVTCPRoutePrefix+"echo-cut", []byte(`{"listen": "127.0.0.2:0", "service": "tagged", "drain_timeout": "300ms"}`), 0, nil)
	e.synced()
	var cut2 net.Conn
	eventually.True(t, 10*time.Second, "the changed KV route sends to service tagged", func() bool {
		c, name := dialEcho(t, cutAddr)
		if name != "B" {
			c.Close()
			return false
		}
		cut2 = c
		return true
	})
	eventually.True(t, 10*time.Second, "the changed route's old connection drains", func() bool { return closedByPeer(cut) })

	// Deleting the keys: no new connections, the open ones drain.
	e.env.reg.KVDelete(KVTCPRoutePrefix+"echo", false, nil)
	e.env.reg.KVDelete(KVTCPRoutePrefix+"echo-cut", false, nil)
	e.synced()
	eventually.True(t, 10*time.Second, "the KV routes' listeners close", func() bool {
		addrs := e.tcp.Addrs()
		return addrs["127.0.0.2:0"] == "" && addrs["127.0.0.1:0"] != "" // the tag's takes 127.0.0.1:0 over
	})
	if _, name := dialEcho(t, e.addr("127.0.0.1:0")); name != "B" {
		t.Errorf("after the KV route went, 127.0.0.1:0 answered by %q; want the tag's B", name)
	}
	eventually.True(t, 10*time.Second, "the drain timeout ends the deleted route's connection", func() bool { return closedByPeer(cut2) })
	roundTrip(t, keep, "a deleted route's connection without drain_timeout stays\n")
	if _, err := net.DialTimeout("tcp", cutAddr, time.Second); err == nil {
		t.Errorf("the deleted route's listener still accepts")
	}
}

func TestValidateTCPRouteHandler(t *testing.T) {
	h := ValidateTCPRouteHandler()
	for body, want := range map[string]int{
		"listen: \":5432\"\nservice: pg\n":  200,
		"listen: \":99999\"\nservice: pg\n": 400,
		"service: pg\n":                     400,
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/v1/pier/validate/tcp-route", strings.NewReader(body)))
		if w.Code != want {
			t.Errorf("%q: %d %s; want %d", body, w.Code, w.Body, want)
		}
		if want == 400 && !strings.Contains(w.Body.String(), "listen") {
			t.Errorf("%q: the error does not name the field: %s", body, w.Body)
		}
	}
}

// TestTCPRouteFromKVPortInUse: a KV route whose port is taken is shown
// with the error and not served; it is opened at a later change once the
// port is free.
func TestTCPRouteFromKVPortInUse(t *testing.T) {
	e := newTCPEnv(t, nil, TCPConfig{})
	a := newEchoServer(t, "A", nil)
	e.register("a", "echo", a.addr, 1)
	taken := listen(t)
	addr := taken.Addr().String()
	e.env.reg.KVPut(KVTCPRoutePrefix+"busy", []byte("listen: "+addr+"\nservice: echo\n"), 0, nil)
	e.synced()
	eventually.True(t, 10*time.Second, "the KV route is shown with its error", func() bool {
		rs := e.tcp.Routes()
		return len(rs) == 1 && rs[0].Key == KVTCPRoutePrefix+"busy" && strings.Contains(rs[0].Error, "address already in use")
	})
	taken.Close()
	e.env.reg.KVPut("other/key", []byte("x"), 0, nil) // any change: the route is tried again
	e.synced()
	eventually.True(t, 10*time.Second, "the route is served once the port is free", func() bool { return e.tcp.Addrs()[addr] != "" })
	c, name := dialEcho(t, addr)
	if name != "A" {
		t.Fatalf("answered by %q", name)
	}
	roundTrip(t, c, "free now\n")
}
