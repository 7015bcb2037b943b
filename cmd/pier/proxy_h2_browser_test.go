package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/net/websocket"
)

// TestProxyH2Browser: Chromium loads a page through the front door's TLS
// listener over HTTP/2 (the default, lean, HTTP/2 server), fetches from the
// same route, and opens a WebSocket through it: what a person's browser does.
func TestProxyH2Browser(t *testing.T) {
	chromium(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, `<!doctype html><title>wait</title><script>
(async () => {
  const r = await fetch("/app/data");
  const text = await r.text();
  const page = performance.getEntriesByType("navigation")[0].nextHopProtocol;
  const fetched = performance.getEntriesByType("resource").find(e => e.name.endsWith("/app/data")).nextHopProtocol;
  const ws = new WebSocket("wss://" + location.host + "/app/ws");
  ws.onopen = () => ws.send("ping");
  ws.onmessage = e => { document.title = ["done", page, fetched, text, e.data].join(" "); ws.close(); };
  ws.onerror = () => { document.title = "websocket failed"; };
})().catch(e => { document.title = "failed: " + e; });
</script>`)
	})
	mux.HandleFunc("/data", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "data-ok") })
	mux.Handle("/ws", websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	port := serveBackend(t, mux)

	dir := t.TempDir()
	cert, _ := selfSigned(t, "localhost")
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600)
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`proxy:
  addr: 127.0.0.1:0
  tls:
    addr: 127.0.0.1:0
    certs:
      - cert_file: %s
        key_file: %s
  routes:
    - path: /app/
      service: app
      strip: /app
`, certFile, keyFile)), 0o600)
	a := startAgent(t, "-dev", "-node", "h2browser", "-config-file", cfg)
	put(t, "http://"+a.addr+"/v1/agent/service/register", fmt.Sprintf(`{"ID":"app-1","Name":"app","Address":"127.0.0.1","Port":%d}`, port))
	m := proxyTLSLine.FindStringSubmatch(a.logs())
	if m == nil {
		t.Fatalf("no proxy_tls= in the agent's log:\n%s", a.logs())
	}
	b := newBrowser(t, "https://"+m[1]+"/app/", 800, 600, chromedp.Flag("ignore-certificate-errors", true))
	b.waitFor(30*time.Second, "the page's fetch and WebSocket", `document.title.startsWith("done") || document.title.includes("failed")`)
	title, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.title`))
	if err != nil {
		t.Fatal(err)
	}
	if title != "done h2 h2 data-ok ping" {
		t.Fatalf("the page says %q, want \"done h2 h2 data-ok ping\" (page and fetch over h2, the WebSocket echoing)\n%s", title, a.logs())
	}
}
