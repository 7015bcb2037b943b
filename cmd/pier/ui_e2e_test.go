package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium finds a headless-capable Chromium, or skips the test unless
// PIER_REQUIRE_BROWSER=1 (as .ci/run sets) makes its absence a failure.
func chromium(t *testing.T) string {
	t.Helper()
	needBinary(t)
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("PIER_REQUIRE_BROWSER") == "1" {
		t.Fatal("no chromium binary found and PIER_REQUIRE_BROWSER=1 (apt-get install chromium)")
	}
	t.Skip("no chromium binary found (.ci/run installs Debian's chromium); skipping the browser test")
	return ""
}

// put sends a PUT to the agent's API and fails the test unless it is 200.
func put(t *testing.T, url, body string) {
	t.Helper()
	req, _ := http.NewRequest("PUT", url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("PUT %s: %d %s", url, resp.StatusCode, b)
	}
}

// TestWebUI loads /ui/ of the built agent in headless Chromium and checks
// what a person sees: services with a failing check's status and output,
// nodes, a route with its instance and a request count that moves with
// traffic, and a new service appearing without a reload.
func TestWebUI(t *testing.T) {
	chromium(t)

	port := serveBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from api")
	}))

	cfg := filepath.Join(t.TempDir(), "pier.yaml")
	os.WriteFile(cfg, []byte("proxy:\n  addr: 127.0.0.1:0\n  routes:\n    - path: /api/\n      service: api\n      strip: /api\n"), 0o600)
	a := startAgent(t, "-dev", "-node", "uinode", "-config-file", cfg)
	base := "http://" + a.addr
	proxy := "http://" + a.proxyAddr()

	put(t, base+"/v1/agent/service/register", fmt.Sprintf(`{"ID":"api-1","Name":"api","Tags":["v1"],"Address":"127.0.0.1","Port":%d}`, port))
	put(t, base+"/v1/agent/service/register", `{"ID":"web-1","Name":"web","Port":9999,"Check":{"CheckID":"web-ttl","Name":"web alive","TTL":"10m"}}`)
	put(t, base+"/v1/agent/check/fail/web-ttl?note=database+unreachable", "")

	b := newBrowser(t, base+"/ui/", 1200, 900)
	waitFor := func(what, expr string) {
		t.Helper()
		b.waitFor(15*time.Second, what, expr)
	}
	ctx := b.ctx
	viewHas := func(s string) string {
		return fmt.Sprintf(`document.getElementById("view").innerText.includes(%q)`, s)
	}
	card := func(attr, name string) string {
		return fmt.Sprintf(`(document.querySelector('[%s=%q]') || {innerText: ""}).innerText`, attr, name)
	}

	// Services: both names, the failing check's word and output, the
	// passing one's word.
	waitFor("the services", viewHas("api")+" && "+viewHas("web"))
	waitFor("web's failing check", card("data-service", "web")+`.includes("critical") && `+card("data-service", "web")+`.includes("database unreachable")`)
	waitFor("api passing", card("data-service", "api")+`.includes("passing")`)
	// One datacenter: no switcher, and no ?dc= in the address.
	waitFor("no datacenter switcher", `document.getElementById("dc-label").hidden && document.getElementById("dc").options.length === 1 && !location.hash.includes("dc=")`)
	// A marker that a full reload would erase.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`window.pierNoReload = true`)); err != nil {
		t.Fatal(err)
	}

	// The filter box hides what does not match, by keyboard.
	if err := chromedp.Do(ctx, chromedp.SendKeys("#filter", "web")); err != nil {
		t.Fatal(err)
	}
	waitFor("only web after filtering", `!document.querySelector('[data-service="api"]') && !!document.querySelector('[data-service="web"]')`)
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`(f => { f.value = ""; f.dispatchEvent(new Event("input")) })(document.getElementById("filter"))`)); err != nil {
		t.Fatal(err)
	}

	// A new service appears without a reload.
	put(t, base+"/v1/agent/service/register", `{"ID":"cache-1","Name":"cache","Port":6379,"Tags":["primary"]}`)
	waitFor("the new service", `!!document.querySelector('[data-service="cache"]') && window.pierNoReload === true`)

	// Nodes: this node, alive, with its services.
	if err := chromedp.Do(ctx, chromedp.Click(`#nav-nodes`)); err != nil {
		t.Fatal(err)
	}
	waitFor("the node", viewHas("uinode")+" && "+viewHas("alive")+" && "+viewHas("cache"))

	// Routes: the route, its instance, and a request count that moves
	// after traffic through the proxy.
	if err := chromedp.Do(ctx, chromedp.Click(`#nav-routes`)); err != nil {
		t.Fatal(err)
	}
	route := card("data-route", "*/api/")
	waitFor("the route with its instance", route+`.includes("api-1") && `+route+fmt.Sprintf(`.includes("127.0.0.1:%d")`, port))
	for range 7 {
		resp, err := http.Get(proxy + "/api/hello")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	waitFor("7 requests on the instance", `[...document.querySelectorAll('[data-route="*/api/"] tbody td')].some(td => td.dataset.label === "requests" && td.innerText.trim() === "7")`)
	waitFor("the error rate and latency of the last point", route+`.includes("0.0% errors") && /p50 [0-9.]+ ms/.test(`+route+`)`)
	waitFor("no reload", `window.pierNoReload === true`)
	b.shot("ui-routes.png")

	if err := chromedp.Do(ctx, chromedp.Click(`#nav-services`)); err != nil {
		t.Fatal(err)
	}
	waitFor("the services again", `!!document.querySelector('[data-service="web"]')`)
	b.shot("ui.png")

	// On a phone's width nothing scrolls sideways.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	waitFor("a page as wide as a phone", `document.documentElement.scrollWidth <= window.innerWidth + 1 && !!document.querySelector('[data-service="web"]')`)
	b.shot("ui-phone.png")
	b.noConsoleErrors()
}
