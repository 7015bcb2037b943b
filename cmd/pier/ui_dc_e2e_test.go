package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestWebUIDatacenters drives the UI's datacenter switcher in headless
// Chromium against two datacenters of real agents on loopback: dc1's UI
// switched to dc2 shows dc2's services, nodes, servers and keys, a KV edit
// made there lands in dc2 and not in dc1, the choice survives a reload
// and plain page links and follows the back button, and the routes page
// (this agent's own) shows a failover route serving from dc2, then from
// dc1 once dc1 has an instance.
func TestWebUIDatacenters(t *testing.T) {
	chromium(t)
	port := serveBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "web in dc2") }))
	conf := filepath.Join(tempDataDir(t), "uidc-door.yaml")
	if err := os.WriteFile(conf, []byte("proxy:\n  addr: 127.0.0.1:0\n  routes:\n    - path: /web/\n      service: web\n      failover: {nearest: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dc1 := startDatacenter(t, "dc1", 0, "", "-config-file", conf)
	dc2 := startDatacenter(t, "dc2", 0, dc1.server.wan)
	base1, base2 := "http://"+dc1.server.addr, "http://"+dc2.server.addr
	put(t, base1+"/v1/agent/service/register", `{"ID":"api-1","Name":"api","Port":8080}`)
	put(t, base2+"/v1/agent/service/register", fmt.Sprintf(`{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":%d}`, port))
	put(t, base1+"/v1/kv/where", "dc1")
	put(t, base2+"/v1/kv/where", "dc2")
	c1 := apiClient(t, dc1.server.addr)
	eventually.True(t, 20*time.Second, "dc1 lists both datacenters", func() bool {
		return slices.Equal(datacentersOf(c1), []string{"dc1", "dc2"})
	})
	eventually.True(t, 20*time.Second, "dc1's front door serves web from dc2", func() bool {
		code, body := get(t, "http://"+dc1.server.proxyAddr()+"/web/")
		return code == 200 && body == "web in dc2"
	})

	b := newBrowser(t, base1+"/ui/", 1280, 800)
	viewport := func(w, h int64) {
		t.Helper()
		b.do("a viewport of the screenshots' size", chromedp.EmulateViewport(w, h))
	}
	viewport(1280, 800)
	waitFor := func(what, expr string) {
		t.Helper()
		b.waitFor(15*time.Second, what, expr)
	}
	viewHas := func(s string) string { return fmt.Sprintf(`document.getElementById("view").innerText.includes(%q)`, s) }
	choose := func(dc string) {
		t.Helper()
		b.eval(fmt.Sprintf(`(s => { s.value = %q; s.dispatchEvent(new Event("change")) })(document.getElementById("dc"))`, dc))
	}

	waitFor("dc1's services and the switcher", `!!document.querySelector('[data-service="api"]') && !document.querySelector('[data-service="web"]') && !document.getElementById("dc-label").hidden && [...document.querySelectorAll("#dc option")].map(o => o.value).join() === "dc1,dc2" && location.hash === "#services?dc=dc1"`)
	b.eval(`window.pierNoReload = true`)
	choose("dc2")
	waitFor("dc2's service, without charts", `!!document.querySelector('[data-service="web"]') && !document.querySelector('[data-service="api"]') && location.hash === "#services?dc=dc2" && !document.querySelector("[data-chart]") && !!document.querySelector("[data-local-only]") && document.getElementById("title-dc").innerText === "in dc2"`)
	b.shot("ui-dc2-services.png")
	// The back button undoes the switch, forward redoes it.
	b.eval(`history.back()`)
	waitFor("dc1 after back", `!!document.querySelector('[data-service="api"]') && location.hash === "#services?dc=dc1" && document.getElementById("dc").value === "dc1"`)
	b.eval(`history.forward()`)
	waitFor("dc2 after forward", `!!document.querySelector('[data-service="web"]') && location.hash === "#services?dc=dc2"`)

	// A plain page link keeps the datacenter (session storage), and the
	// address bar names it.
	b.do("nodes", chromedp.Click(`#nav-nodes`))
	waitFor("dc2's node", viewHas("s-dc2")+" && !"+viewHas("s-dc1")+` && location.hash === "#nodes?dc=dc2" && `+viewHas("alive"))
	b.do("dc2's node page", chromedp.Click(`a[href="#node/s-dc2"]`))
	waitFor("dc2's node page, without charts", `!!document.querySelector('[data-node="s-dc2"]') && location.hash === "#node/s-dc2?dc=dc2" && !document.querySelector("[data-chart]") && !!document.querySelector("[data-local-only]")`)
	b.do("servers", chromedp.Click(`#nav-servers`))
	waitFor("dc2's leader", `(document.querySelector("[data-servers]") || {innerText: ""}).innerText.includes("leader: s-dc2")`)

	// A KV edit in dc2 lands in dc2.
	b.eval(`location.hash = "#kv/where"`)
	waitFor("dc2's value", `(document.getElementById("kv-shown") || {}).innerText === "dc2" && location.hash === "#kv/where?dc=dc2"`)
	b.do("edit it", chromedp.SetValue("#kv-value", "edited in dc2"), chromedp.Click("#kv-save"))
	waitFor("the saved value", `(document.getElementById("kv-shown") || {}).innerText === "edited in dc2"`)
	if code, v := kvRaw(t, base2, "where", ""); code != 200 || v != "edited in dc2" {
		t.Errorf("dc2's key after the edit: %d %q", code, v)
	}
	if code, v := kvRaw(t, base1, "where", ""); code != 200 || v != "dc1" {
		t.Errorf("dc1's key after an edit in dc2: %d %q", code, v)
	}

	// The routes page is this agent's: it says so, and where the failover
	// route serves from.
	b.do("routes", chromedp.Click(`#nav-routes`))
	route := `(document.querySelector('[data-route="*/web/"]') || {innerText: ""}).innerText`
	waitFor("the route serving from dc2", `!!document.querySelector('[data-route="*/web/"][data-serving-from="dc2"]') && `+route+`.includes("serving from dc2") && `+route+`.includes("failed over: serving from dc2 (dc1 has no healthy instance") && !document.getElementById("title-dc").innerText && `+route+`.includes("web-1") && !!document.querySelector("[data-local-only]")`)
	b.shot("ui-dc2-routes.png")
	viewport(390, 844)
	b.dark(true)
	waitFor("the routes page as wide as a phone", `document.documentElement.scrollWidth <= window.innerWidth + 1`)
	b.shot("ui-dc2-routes-390-dark.png")
	b.dark(false)
	viewport(1280, 800)

	// A reload with no datacenter in the address keeps this tab's choice.
	// (?r= makes it a new document, not a hash change.)
	b.do("reload", chromedp.Navigate(base1+"/ui/?r=1#services"))
	waitFor("dc2 after a reload", `window.pierNoReload === undefined && !!document.querySelector('[data-service="web"]') && location.hash === "#services?dc=dc2" && document.getElementById("dc").value === "dc2"`)
	viewport(390, 844)
	waitFor("a page as wide as a phone", `document.documentElement.scrollWidth <= window.innerWidth + 1 && !!document.querySelector('[data-service="web"]')`)
	b.shot("ui-dc2-phone.png")
	viewport(1280, 800)

	// A datacenter nobody knows (an old link): the reason, and the way out.
	b.do("a link to dc9", chromedp.Navigate(base1+"/ui/?r=2#services?dc=dc9"))
	waitFor("dc9 unreachable", `document.getElementById("error").innerText.includes("cannot reach datacenter dc9") && [...document.querySelectorAll("#dc option")].some(o => o.text === "dc9 (unknown)")`)

	// Back to dc1: its own service, charts, and no ?dc= in the address.
	choose("dc1")
	waitFor("dc1 again", `!!document.querySelector('[data-service="api"]') && !document.querySelector('[data-service="web"]') && location.hash === "#services?dc=dc1" && !!document.querySelector("[data-chart]") && !document.querySelector("[data-local-only]")`)
	b.shot("ui-dc1-services.png")

	// An instance of web in dc1: the route comes back home, and says
	// where it would fail over to.
	put(t, base1+"/v1/agent/service/register", fmt.Sprintf(`{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":%d}`, port))
	b.do("routes", chromedp.Click(`#nav-routes`))
	waitFor("the route serving from dc1", `!!document.querySelector('[data-route="*/web/"][data-serving-from="dc1"]') && `+route+`.includes("failover to the nearest datacenter when it has no healthy instance") && `+route+`.includes("s-dc1")`)
	b.noConsoleErrors()
}
