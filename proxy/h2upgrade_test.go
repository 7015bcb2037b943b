package proxy

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// curlEchoes runs curl with args and the URLs, and returns the echoes the
// backend answered and the HTTP versions curl used, one per URL.
func curlEchoes(t *testing.T, args []string, urls ...string) ([]echo, []string) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	var all []string
	for i, u := range urls {
		if i > 0 {
			all = append(all, "--next")
		}
		all = append(all, args...)
		all = append(all, "-sS", "--max-time", "20", "-w", "\nversion=%{http_version}\n", u)
	}
	out, err := exec.Command("curl", all...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", all, err, out)
	}
	var echoes []echo
	var versions []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "version="); ok {
			versions = append(versions, v)
			continue
		}
		if line == "" {
			continue
		}
		var e echo
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not an echo: %q (curl said %s)", line, out)
		}
		echoes = append(echoes, e)
	}
	return echoes, versions
}

// TestH2CUpgrade: with h2c on, curl --http2 on http:// upgrades by
// Upgrade: h2c, its first request answered as stream 1 over HTTP/2 and the
// next on the same connection; the instance sees a plain HTTP/1.1 request
// without the upgrade's headers. A request with a body is served as
// HTTP/1.1. With h2c off the Upgrade header is ignored (as nginx does): the
// request is served as HTTP/1.1, not tunnelled to the instance.
func TestH2CUpgrade(t *testing.T) {
	e := newH2CEnv(t, nil)
	echoes, versions := curlEchoes(t, []string{"--http2"}, "http://"+e.addr+"/api/one?x=1", "http://"+e.addr+"/api/two")
	if strings.Join(versions, ",") != "2,2" || len(echoes) != 2 {
		t.Fatalf("curl --http2: versions %v, %d answers; want 2,2", versions, len(echoes))
	}
	if echoes[0].URI != "/one?x=1" || echoes[1].URI != "/two" {
		t.Errorf("the instance saw %q and %q", echoes[0].URI, echoes[1].URI)
	}
	for _, ec := range echoes {
		for _, h := range []string{"Upgrade", "Http2-Settings"} {
			if v := ec.Header.Get(h); v != "" {
				t.Errorf("the instance saw %s: %q", h, v)
			}
		}
		if ec.Header.Get("X-Forwarded-For") != "127.0.0.1" || ec.Host != e.addr {
			t.Errorf("forwarding headers: X-Forwarded-For %q, Host %q", ec.Header.Get("X-Forwarded-For"), ec.Host)
		}
	}

	// With a body: not upgraded.
	echoes, versions = curlEchoes(t, []string{"--http2", "-d", "hello"}, "http://"+e.addr+"/api/post")
	if strings.Join(versions, ",") != "1.1" || len(echoes) != 1 || echoes[0].Body != 5 || echoes[0].Method != "POST" {
		t.Fatalf("curl --http2 -d: versions %v, answers %+v; want 1.1 and the body passed on", versions, echoes)
	}

	// h2c off: ignored.
	off := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/api/", Service: "api", Strip: "/api"}} })
	be := newBackend(t, "plain")
	off.register("plain", "api", be.addr, 1)
	off.synced()
	echoes, versions = curlEchoes(t, []string{"--http2"}, "http://"+off.addr+"/api/one", "http://"+off.addr+"/api/two")
	if strings.Join(versions, ",") != "1.1,1.1" || len(echoes) != 2 {
		t.Fatalf("curl --http2, h2c off: versions %v, %d answers; want 1.1,1.1", versions, len(echoes))
	}
	if v := echoes[0].Header.Get("Upgrade") + echoes[0].Header.Get("Http2-Settings"); v != "" {
		t.Errorf("h2c off: the instance saw the upgrade's headers: %q", v)
	}
	if n := be.hits.Load(); n != 2 {
		t.Errorf("h2c off: the instance got %d requests, want 2", n)
	}
}

// TestH2CUpgradeRefused: an upgrade whose HTTP2-Settings is missing, given
// twice or not base64 is answered over HTTP/1.1, as if not asked.
func TestH2CUpgradeRefused(t *testing.T) {
	e := newH2CEnv(t, nil)
	for name, hdr := range map[string]string{
		"no settings":   "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n",
		"twice":         "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
		"not base64":    "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: !!!\r\n",
		"no Connection": "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
	} {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("GET /api/x HTTP/1.1\r\nHost: a\r\n" + hdr + "\r\n"))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode != 200 || resp.ProtoMajor != 1 {
			t.Errorf("%s: %v %v", name, resp, err)
		}
	}
}

// TestH2CUpgradeRawAndDrain drives the upgrade with x/net's framer: the
// 101, the answer to the upgrade request on stream 1, and at shutdown a
// GOAWAY on the upgraded connection, which then closes.
func TestH2CUpgradeRawAndDrain(t *testing.T) {
	e := newH2CEnv(t, nil)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte("GET /api/raw HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "h2c" {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	c.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(c, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var status string
	var body []byte
	for done := false; !done; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading stream 1: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != 1 {
				t.Fatalf("headers on stream %d", f.StreamID)
			}
			status = f.PseudoValue("status")
			done = f.StreamEnded()
		case *http2.DataFrame:
			body = append(body, f.Data()...)
			done = f.StreamEnded()
		}
	}
	if status != "200" || decode(t, string(body)).URI != "/raw" {
		t.Fatalf("stream 1: %s %s", status, body)
	}
	go e.close()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY before the connection ended: %v", err)
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			break
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := fr.ReadFrame(); err != nil {
			break // closed
		}
	}
}
