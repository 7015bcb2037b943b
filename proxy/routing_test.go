package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

func TestRouting(t *testing.T) {
	api, apiv2, shop, tagged, root := newBackend(t, "api"), newBackend(t, "apiv2"), newBackend(t, "shop"), newBackend(t, "tagged"), newBackend(t, "root")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{
			{Path: "/api/", Service: "api", Strip: "/api"}, // the seed's location ~ ^/api/(.*)$
			{Path: "/api/v2", Service: "apiv2", Strip: "/api/v2", Prepend: "/internal"},
			{Host: "Shop.Example.com", Service: "shop"},
			{Path: "/", Service: "root"},
		}
	})
	e.register("api-1", "api", api.addr, 1)
	e.register("apiv2-1", "apiv2", apiv2.addr, 1)
	e.register("shop-1", "shop", shop.addr, 1)
	e.register("tagged-1", "tagged", tagged.addr, 1, "urlprefix-/tagged strip=/tagged", "urlprefix-tags.example.com/x", "v1")
	e.register("root-1", "root", root.addr, 1)

	cases := []struct {
		host, path string
		name, uri  string
	}{
		{"", "/api/users?id=7&x=%2F", "api", "/users?id=7&x=%2F"},
		{"", "/api/", "api", "/"},
		{"", "/api/v2/items", "apiv2", "/internal/items"},
		{"", "/api/v2", "apiv2", "/internal/"},
		{"", "/api/v2x", "api", "/v2x"}, // /api/v2 is not a prefix of the segment v2x
		{"", "/apix", "root", "/apix"},
		{"shop.example.com", "/api/users", "shop", "/api/users"}, // a host route beats a path route
		{"SHOP.example.com:8080", "/", "shop", "/"},
		{"", "/tagged/a/b", "tagged", "/a/b"},
		{"tags.example.com", "/x/1", "tagged", "/x/1"},
		{"tags.example.com", "/y", "root", "/y"},
		{"other.example.com", "/", "root", "/"},
	}
	for _, c := range cases {
		code, body := e.get(c.host, c.path)
		if code != 200 {
			t.Errorf("%s%s: %d %s", c.host, c.path, code, body)
			continue
		}
		got := decode(t, body)
		if got.Name != c.name || got.URI != c.uri {
			t.Errorf("%s%s: went to %s as %q, want %s as %q", c.host, c.path, got.Name, got.URI, c.name, c.uri)
		}
	}

	// The route table as the API shows it.
	routes := e.p.Routes()
	var tag *RouteInfo
	for i := range routes {
		if routes[i].Path == "/tagged" {
			tag = &routes[i]
		}
	}
	if tag == nil || tag.Source != "tag" || tag.Service != "tagged" || tag.Strip != "/tagged" || len(tag.Instances) != 1 || tag.Instances[0].Addr != tagged.addr {
		t.Errorf("tag route: %+v", tag)
	}
	if len(routes) != 6 {
		t.Errorf("%d routes, want 6: %+v", len(routes), routes)
	}
}

func TestNoRouteAndNoInstance(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/api/", Service: "api"}}
	})
	if code, body := e.get("", "/nothing"); code != 404 || !strings.Contains(body, "no route") {
		t.Errorf("no route: %d %q", code, body)
	}
	if code, body := e.get("", "/api/x"); code != 502 || !strings.Contains(body, `"api"`) {
		t.Errorf("no instance: %d %q", code, body)
	}
	// An instance that is registered but critical is not routable either.
	b := newBackend(t, "api")
	e.register("api-1", "api", b.addr, 1)
	if code, _ := e.get("", "/api/x"); code != 200 {
		t.Errorf("after registering: %d", code)
	}
	if err := e.reg.RegisterCheck(registry.Check{CheckID: "c1", Name: "c1", Status: registry.StatusCritical, ServiceID: "api-1"}, registry.SourceAPI); err != nil {
		t.Fatal(err)
	}
	e.synced()
	if code, body := e.get("", "/api/x"); code != 502 || !strings.Contains(body, `no healthy instance of service "api"`) {
		t.Errorf("critical instance: %d %q", code, body)
	}
	// A path with dot segments is refused, not normalized into another route.
	if code, _ := rawGet(t, e.addr, "GET /api/../admin HTTP/1.1\r\nHost: x\r\n\r\n"); code != 400 {
		t.Errorf("dot segments: %d", code)
	}
}

func TestHeaders(t *testing.T) {
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)

	code, body := rawGet(t, e.addr, "GET /p?q=1&r=%20 HTTP/1.1\r\n"+
		"Host: Front.Example.com:8080\r\n"+
		"X-Forwarded-For: 10.0.0.1\r\n"+
		"X-Real-IP: 6.6.6.6\r\n"+
		"X-Forwarded-Proto: https\r\n"+
		"Connection: keep-alive, X-Secret\r\n"+
		"X-Secret: s3cr3t\r\n"+
		"Keep-Alive: timeout=5\r\n"+
		"Proxy-Connection: keep-alive\r\n"+
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"+
		"TE: trailers\r\n"+
		"X-Custom: kept\r\n\r\n")
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	got := decode(t, body)
	h := got.Header
	checks := []struct{ name, got, want string }{
		{"Host", got.Host, "Front.Example.com:8080"},
		{"URI", got.URI, "/p?q=1&r=%20"},
		{"X-Forwarded-For", h.Get("X-Forwarded-For"), "10.0.0.1, 127.0.0.1"},
		{"X-Real-IP", h.Get("X-Real-Ip"), "127.0.0.1"},
		{"X-Forwarded-Proto", h.Get("X-Forwarded-Proto"), "http"},
		{"X-Forwarded-Host", h.Get("X-Forwarded-Host"), "Front.Example.com:8080"},
		{"X-Custom", h.Get("X-Custom"), "kept"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	for _, k := range []string{"X-Secret", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Te"} {
		if v := h.Get(k); v != "" {
			t.Errorf("hop-by-hop %s forwarded: %q", k, v)
		}
	}
	if id := h.Get("X-Request-Id"); len(id) != 32 {
		t.Errorf("X-Request-Id = %q, want 32 hex digits", id)
	}
	// A request ID the client sent is kept.
	_, body, _ = e.do("GET", "", "/", nil, "X-Request-Id", "abc-123")
	if id := decode(t, body).Header.Get("X-Request-Id"); id != "abc-123" {
		t.Errorf("X-Request-Id = %q, want the client's", id)
	}
}

func TestLimits(t *testing.T) {
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) {
		c.Routes = []Route{{Path: "/", Service: "api"}}
		c.MaxBodySize = 1000
		c.MaxHeaderSize = 4096
		c.HeaderTimeout = 300 * time.Millisecond
	})
	e.register("api-1", "api", b.addr, 1)
	if code, _, _ := e.do("POST", "", "/", strings.NewReader(strings.Repeat("x", 1000))); code != 200 {
		t.Errorf("body at the limit: %d", code)
	}
	// Over the limit the proxy answers before it has read the body and
	// closes: a client still writing may get EPIPE before it reads the 413
	// (net/http did, once, in CI). These go on a raw connection, whose whole
	// request fits in the socket buffer.
	if code, _ := rawGet(t, e.addr, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"+strings.Repeat("x", 1001)); code != 413 {
		t.Errorf("body over the limit: %d", code)
	}
	// Without a Content-Length (chunked), the limit holds as the body streams.
	code, body, _ := e.do("POST", "", "/", io.MultiReader(strings.NewReader(strings.Repeat("y", 1000))))
	if code != 200 || decode(t, body).Body != 1000 {
		t.Errorf("chunked body at the limit: %d %s", code, body)
	}
	if code, _ := rawGet(t, e.addr, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n"+strings.Repeat("y", 5000)+"\r\n0\r\n\r\n"); code != 413 {
		t.Errorf("chunked body over the limit: %d", code)
	}
	code, _ = rawGet(t, e.addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 8000)+"\r\n\r\n")
	if code != 431 && code != 400 {
		t.Errorf("header over the limit: %d", code)
	}
	// A client that never finishes its headers is cut off.
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Error("a slow client was not cut off by the header timeout")
			}
			break
		}
	}
}

// rawGet writes a request as given and reads one response.
func rawGet(t *testing.T, addr, raw string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	bufio.NewReader(resp.Body).WriteTo(&sb)
	return resp.StatusCode, sb.String()
}

func TestAccessLog(t *testing.T) {
	b := newBackend(t, "api")
	for _, tc := range []struct {
		format string
		want   []string
	}{
		{AccessLogJSON, []string{
			`"remote":"127.0.0.1","method":"GET","host":"`,
			`"uri":"/api/x?y=1","status":200,"bytes":`,
			`"service":"api","backend":"` + b.addr + `","tries":1,"request_id":"rid-1","referer":"","user_agent":"Go-http-client/1.1"}`,
			`"uri":"/none","status":404,`, `"service":"","backend":"","tries":0,`,
		}},
		{AccessLogCombined, []string{
			`127.0.0.1 - - [`, `] "GET /api/x?y=1 HTTP/1.1" 200 `, ` "-" "Go-http-client/1.1"` + "\n",
			`"GET /none HTTP/1.1" 404 `,
		}},
		{AccessLogOff, nil},
	} {
		t.Run(tc.format, func(t *testing.T) {
			var mu sync.Mutex
			var buf bytes.Buffer
			e := newEnv(t, func(c *Config) {
				c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}}
				c.AccessLog = tc.format
				c.AccessLogTo = &lockedWriter{mu: &mu, w: &buf}
			})
			e.register("api-1", "api", b.addr, 1)
			e.do("GET", "", "/api/x?y=1", nil, "X-Request-Id", "rid-1")
			e.get("", "/none")
			e.close() // Run flushes the log as it ends
			mu.Lock()
			out := buf.String()
			mu.Unlock()
			if tc.want == nil && out != "" {
				t.Errorf("access log off wrote:\n%s", out)
			}
			for _, want := range tc.want {
				if !strings.Contains(out, want) {
					t.Errorf("access log lacks %q:\n%s", want, out)
				}
			}
			if tc.format == AccessLogJSON {
				for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
					var v map[string]any
					if err := json.Unmarshal([]byte(line), &v); err != nil {
						t.Errorf("not JSON: %v: %s", err, line)
					}
				}
			}
		})
	}
}

func TestAccessLogEscaping(t *testing.T) {
	got := string(appendJSONString(nil, "/q\"\\\x01\xffé"))
	if want := `/q\"\\\u0001\ufffdé`; got != want {
		t.Errorf("JSON escaping: got %s, want %s", got, want)
	}
	got = string(appendQuoted(nil, []byte("/q\"\x01\xff")))
	if want := `/q\x22\x01\xff`; got != want {
		t.Errorf("combined escaping: got %s, want %s", got, want)
	}
}

func TestAccessLogBadFormat(t *testing.T) {
	if _, err := newAccessLog("common", io.Discard); err == nil {
		t.Fatal("access_log common accepted")
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
