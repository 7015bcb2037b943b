package proxy

import (
	"io"
	"net/http"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// TestStreaming sends 100 MiB up (with a Content-Length) and 100 MiB down
// (chunked) through the proxy, and 8 MiB the other ways, and checks that
// the whole process allocated far less than that: bodies are streamed,
// never held whole.
func TestStreaming(t *testing.T) {
	const big, small = 100 << 20, 8 << 20
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	for _, chunked := range []bool{false, true} {
		size := int64(big)
		if chunked {
			size = small
		}
		// Upload.
		req, _ := http.NewRequest("POST", "http://"+e.addr+"/upload", io.LimitReader(zeros{}, size))
		if !chunked {
			req.ContentLength = size
		}
		resp, err := e.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || decode(t, string(body)).Body != size {
			t.Fatalf("upload (chunked %v): %d %.200s", chunked, resp.StatusCode, body)
		}

		// Download.
		size = big + small - size
		url := "http://" + e.addr + "/download?size=" + strconv.FormatInt(size, 10)
		if chunked {
			url += "&chunked=1"
		}
		resp, err = e.http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size || resp.StatusCode != 200 {
			t.Fatalf("download (chunked %v): %d, %d bytes, %v", chunked, resp.StatusCode, n, err)
		}
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 48<<20 {
		t.Errorf("moving 216 MiB allocated %d MiB: a body was buffered", alloc>>20)
	} else {
		t.Logf("moving 216 MiB allocated %d MiB in all (proxy, backend and client)", alloc>>20)
	}
}

func TestWebSocket(t *testing.T) {
	echoSrv := &http.Server{Handler: websocket.Handler(func(c *websocket.Conn) {
		io.Copy(c, c)
	}), ReadHeaderTimeout: 10 * time.Second}
	ln := listen(t)
	go echoSrv.Serve(ln)
	t.Cleanup(func() { echoSrv.Close() })

	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/ws/", Service: "ws", Strip: "/ws"}} })
	e.register("ws-1", "ws", ln.Addr().String(), 1)

	cfg, err := websocket.NewConfig("ws://"+e.addr+"/ws/echo", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	c, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatalf("WebSocket handshake through the proxy: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	for _, msg := range []string{"hello", "through", "pier"} {
		if err := websocket.Message.Send(c, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(c, &got); err != nil || got != msg {
			t.Fatalf("echo: %q, %v", got, err)
		}
	}
	// The tunnel counts as a connection in flight on its backend.
	if r := e.p.Routes(); len(r) != 1 || len(r[0].Instances) != 1 || r[0].Instances[0].InFlight != 1 {
		t.Errorf("routes during a tunnel: %+v", r)
	}
}

// TestDownloadCountsInFlight: a request is in flight on its instance until
// the whole response has reached the client, not just its headers.
func TestDownloadCountsInFlight(t *testing.T) {
	release := make(chan struct{})
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("first part\n"))
		w.(http.Flusher).Flush()
		<-release
		w.Write([]byte("second part\n"))
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "dl"}} })
	e.register("dl-1", "dl", ln.Addr().String(), 1)

	resp, err := e.http.Get("http://" + e.addr + "/file")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, len("first part\n"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	inflight := func() int64 {
		r := e.p.Routes()
		if len(r) != 1 || len(r[0].Instances) != 1 {
			t.Fatalf("routes: %+v", r)
		}
		return r[0].Instances[0].InFlight
	}
	if n := inflight(); n != 1 {
		t.Errorf("in flight during the download: %d, want 1", n)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second part\n" {
		t.Errorf("rest of the body: %q", rest)
	}
}
