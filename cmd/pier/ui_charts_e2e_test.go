package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pier-dev/pier/deploy/eventually"
)

// apiDo sends one request to the agent's API and answers its status and
// body.
func apiDo(t testing.TB, method, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// kvRaw reads a key's raw value; 404 answers "".
func kvRaw(t *testing.T, base, key, token string) (int, string) {
	t.Helper()
	return apiDo(t, "GET", base+"/v1/kv/"+key+"?raw", token, "")
}

// TestWebUIChartsKVServers drives the UI's charts, KV editor and servers
// page in headless Chromium against the built agent: charts that appear
// and grow under traffic sent through the front door, a KV edit round
// trip, an edit refused because the key changed meanwhile, a route refused
// with its reason, a delete after confirmation, and screenshots at desktop
// and phone widths, light and dark.
func TestWebUIChartsKVServers(t *testing.T) {
	chromium(t)
	port := serveBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/fail") {
			w.WriteHeader(http.StatusInternalServerError)
		}
		fmt.Fprintln(w, "hello")
	}))

	cfg := filepath.Join(t.TempDir(), "pier.yaml")
	os.WriteFile(cfg, []byte("proxy:\n  addr: 127.0.0.1:0\n  routes:\n    - path: /api/\n      service: api\n"), 0o600)
	a := startAgent(t, "-dev", "-node", "chartnode", "-config-file", cfg)
	base := "http://" + a.addr
	proxy := "http://" + a.proxyAddr()
	put(t, base+"/v1/agent/service/register", fmt.Sprintf(`{"ID":"api-1","Name":"api","Address":"127.0.0.1","Port":%d}`, port))
	put(t, base+"/v1/agent/service/register", `{"ID":"web-1","Name":"web","Port":9999,"Check":{"CheckID":"web-ttl","TTL":"10m"}}`)
	put(t, base+"/v1/agent/check/fail/web-ttl?note=down", "")
	put(t, base+"/v1/kv/app/config.json", `{"feature":true,"limits":[1,2]}`)
	put(t, base+"/v1/kv/app/blob", "\x00\x01\x02\xffbin")

	b := newBrowser(t, base+"/ui/#routes", 1280, 800)
	const chartWait = 40 * time.Second // a point every 5 s
	reqChart := `document.querySelector('[data-chart="route:/api/"] svg')`

	// Charts: the route's appear, then grow and show 2xx and 5xx while
	// traffic goes through the front door (bounded: 40 rounds at most).
	b.waitFor(chartWait, "the route's charts", `!!`+reqChart+` && `+reqChart+`.dataset.points >= 1`)
	before := b.number(`Number(` + reqChart + `.dataset.points)`)
	grew := fmt.Sprintf(`Number(`+reqChart+`.dataset.points) > %v && [...document.querySelectorAll('[data-chart="route:/api/"] .key.c2, [data-chart="route:/api/"] .key.c5')].every(k => !/ 0\.00$|–$/.test(k.innerText)) && !!document.querySelector('[data-chart="route:/api/"] path.c5')`, before)
	deadline := time.Now().Add(chartWait)
	for round := 0; round < 40 && time.Now().Before(deadline); round++ {
		for _, path := range []string{"/api/ok", "/api/ok", "/api/fail"} {
			resp, err := http.Get(proxy + path)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		ok, _ := chromedp.Run(b.ctx, chromedp.Evaluate[bool](grew))
		if ok {
			break
		}
		time.Sleep(time.Second)
	}
	b.waitFor(5*time.Second, "the route's chart grown, with 2xx and 5xx", grew)
	b.waitFor(5*time.Second, "latency and healthy instances", `[...document.querySelectorAll('[data-chart="route:/api/"] figcaption')].map(f => f.innerText).join(" ").includes("ms") && document.querySelector('[data-chart="route:/api/"]').innerText.includes("healthy 1")`)
	b.shot("charts-routes-1280.png")

	// Services: a chart per service; the node page charts its checks.
	b.eval(`location.hash = "#services"`)
	b.waitFor(chartWait, "the services' charts", `!!document.querySelector('[data-chart="service:api"] svg') && !!document.querySelector('[data-chart="service:web"] svg')`)
	b.eval(`location.hash = "#nodes"`)
	b.waitFor(10*time.Second, "a link to the node", `!!document.querySelector('a[href="#node/chartnode"]')`)
	b.do("open the node", chromedp.Click(`a[href="#node/chartnode"]`))
	b.waitFor(chartWait, "the node's check chart", `!!document.querySelector('[data-chart="node:chartnode"] svg') && document.querySelector('[data-chart="node:chartnode"]').innerText.includes("critical 1")`)
	b.shot("node-1280.png")

	// KV: folders, JSON shown pretty, binary as hex.
	b.eval(`location.hash = "#kv/"`)
	b.waitFor(10*time.Second, "the KV root with its folder", `!!document.querySelector('a[href="#kv/app/"]')`)
	b.do("open app/", chromedp.Click(`a[href="#kv/app/"]`))
	b.waitFor(10*time.Second, "the app/ folder", `!!document.querySelector('a[href="#kv/app/config.json"]') && !!document.querySelector('a[href="#kv/app/blob"]')`)
	b.do("open the JSON key", chromedp.Click(`a[href="#kv/app/config.json"]`))
	b.waitFor(10*time.Second, "JSON pretty-printed", `document.getElementById("kv-shown").innerText.includes('"limits": [\n    1,')`)
	b.eval(`location.hash = "#kv/app/blob"`)
	b.waitFor(10*time.Second, "binary as hex", `document.getElementById("kv-shown").innerText.startsWith("00000000  00 01 02 ff 62 69 6e")`)

	// Create a key through the folder's form, then edit it: the round trip.
	b.eval(`location.hash = "#kv/app/"`)
	b.waitFor(10*time.Second, "the new-key form", `!!document.getElementById("kv-new-key")`)
	b.do("type a new key",
		chromedp.SetValue("#kv-new-key", "app/greeting"),
		chromedp.SendKeys("#kv-new-value", "hello"),
		chromedp.Click(`form[aria-label="New key"] button[type=submit]`))
	b.waitFor(10*time.Second, "the new key", `location.hash === "#kv/app/greeting" && !!document.getElementById("kv-value")`)
	if code, v := kvRaw(t, base, "app/greeting", ""); code != 200 || v != "hello" {
		t.Fatalf("created key: %d %q", code, v)
	}
	b.do("edit it", chromedp.SetValue("#kv-value", "hello, edited"), chromedp.Click("#kv-save"))
	b.waitFor(10*time.Second, "saved", `document.getElementById("kv-message") && document.getElementById("kv-message").innerText.includes("Saved app/greeting")`)
	if code, v := kvRaw(t, base, "app/greeting", ""); code != 200 || v != "hello, edited" {
		t.Fatalf("edited key: %d %q", code, v)
	}

	// A conflicting edit: the key changes behind the open page, through
	// another node (a client agent that forwards to the server), so the
	// page's save is refused and the other change stays.
	b.waitFor(10*time.Second, "the editor again", `document.getElementById("kv-value").value === "hello, edited"`)
	other := "http://" + startAgent(t, "-node", "othernode", "-data-dir", t.TempDir(), "-bind", "127.0.0.1", "-join", a.gossip).addr
	eventually.NoError(t, 30*time.Second, "the other node reads the key through the servers", func() error {
		if code, v := kvRaw(t, other, "app/greeting", ""); code != 200 || v != "hello, edited" {
			return fmt.Errorf("%d %q", code, v)
		}
		return nil
	})
	put(t, other+"/v1/kv/app/greeting", "changed elsewhere")
	b.do("edit the stale value", chromedp.SetValue("#kv-value", "my stale edit"), chromedp.Click("#kv-save"))
	b.waitFor(10*time.Second, "the conflict refused", `document.getElementById("kv-value-error").innerText.includes("Not saved: someone changed this key") && document.getElementById("kv-value").value === "my stale edit"`)
	if _, v := kvRaw(t, base, "app/greeting", ""); v != "changed elsewhere" {
		t.Fatalf("the conflicting edit overwrote the key: %q", v)
	}
	b.shot("kv-conflict-1280.png")

	// Load the value that won, then delete it after a confirmation (the
	// delete, too, is refused if the key changed since it was shown).
	b.do("load the current value", chromedp.Click("#kv-value-error button"))
	b.waitFor(10*time.Second, "the current value", `!!document.getElementById("kv-value") && document.getElementById("kv-value").value === "changed elsewhere"`)
	b.do("ask to delete", chromedp.Click(`[data-kv-key="app/greeting"] .confirm button.danger`))
	b.waitFor(5*time.Second, "the question", `document.querySelector('[data-kv-key="app/greeting"] .confirm').innerText.includes("Delete app/greeting?")`)
	if code, _ := kvRaw(t, base, "app/greeting", ""); code != 200 {
		t.Fatalf("deleted before the confirmation: %d", code)
	}
	b.do("confirm", chromedp.Click(`[data-kv-key="app/greeting"] .confirm button.danger`))
	b.waitFor(10*time.Second, "back in the folder", `location.hash === "#kv/app/" && !!document.getElementById("kv-new-key")`)
	if code, _ := kvRaw(t, base, "app/greeting", ""); code != 404 {
		t.Fatalf("key after delete: %d", code)
	}

	// A route that a front door would refuse is refused before it is saved,
	// with the reason next to the value.
	b.eval(`location.hash = "#kv/pier/routes/"`)
	b.waitFor(10*time.Second, "the routes folder's form", `!!document.getElementById("kv-new-key") && document.getElementById("kv-new-key").value === "pier/routes/"`)
	b.do("type a bad route",
		chromedp.SetValue("#kv-new-key", "pier/routes/broken"),
		chromedp.SetValue("#kv-new-value", "path: /x/\nservce: x\n"),
		chromedp.Click(`form[aria-label="New key"] button[type=submit]`))
	b.waitFor(10*time.Second, "the route's error by its field", `document.getElementById("kv-new-value-error").innerText.includes("Not a valid route") && document.getElementById("kv-new-value-error").innerText.includes("servce") && document.getElementById("kv-new-value").getAttribute("aria-invalid") === "true"`)
	if code, _ := kvRaw(t, base, "pier/routes/broken", ""); code != 404 {
		t.Fatalf("the invalid route was saved: %d", code)
	}
	b.shot("kv-route-error-1280.png")
	// A TCP route too, by its own check.
	b.eval(`location.hash = "#kv/pier/tcp-routes/"`)
	b.waitFor(10*time.Second, "the tcp routes folder's form", `!!document.getElementById("kv-new-key") && document.getElementById("kv-new-key").value === "pier/tcp-routes/"`)
	b.do("type a bad tcp route",
		chromedp.SetValue("#kv-new-key", "pier/tcp-routes/broken"),
		chromedp.SetValue("#kv-new-value", "listen: nope\nservice: x\n"),
		chromedp.Click(`form[aria-label="New key"] button[type=submit]`))
	b.waitFor(10*time.Second, "the tcp route's error by its field", `document.getElementById("kv-new-value-error").innerText.includes("Not a valid route") && document.getElementById("kv-new-value-error").innerText.includes("listen")`)
	if code, _ := kvRaw(t, base, "pier/tcp-routes/broken", ""); code != 404 {
		t.Fatalf("the invalid tcp route was saved: %d", code)
	}

	// Servers: the one Raft peer leads; a session and the lock it holds.
	code, body := apiDo(t, "PUT", base+"/v1/session/create", "", `{"Name":"deployer"}`)
	if code != 200 {
		t.Fatalf("session create: %d %s", code, body)
	}
	var sess struct{ ID string }
	json.Unmarshal([]byte(body), &sess)
	if code, body := apiDo(t, "PUT", base+"/v1/kv/locks/deploy?acquire="+sess.ID, "", "me"); code != 200 || strings.TrimSpace(body) != "true" {
		t.Fatalf("acquire: %d %s", code, body)
	}
	b.eval(`location.hash = "#servers"`)
	b.waitFor(15*time.Second, "the leader", `document.querySelector('[data-servers]').innerText.includes("leader: chartnode") && !document.querySelector('[data-servers]').innerText.includes("null")`)
	b.waitFor(15*time.Second, "the session and its lock", `document.querySelector('[data-sessions]').innerText.includes("deployer") && !!document.querySelector('[data-sessions] a[href="#kv/locks/deploy"]')`)
	b.shot("servers-1280.png")

	// Keyboard: the nav is reachable by Tab and followed by Enter.
	b.eval(`document.getElementById("nav-routes").focus()`)
	b.do("Enter on Routes", chromedp.KeyEvent("\r"))
	b.waitFor(10*time.Second, "the routes page by keyboard", `location.hash === "#routes" && !!document.querySelector('[data-chart="route:/api/"] svg')`)

	// Dark mode, then a phone's width: nothing scrolls sideways.
	b.dark(true)
	b.waitFor(5*time.Second, "dark colours", `getComputedStyle(document.body).backgroundColor === "rgb(22, 22, 21)"`)
	b.shot("charts-routes-1280-dark.png")
	b.do("phone width", chromedp.EmulateViewport(390, 844))
	b.waitFor(10*time.Second, "a page as wide as a phone", `document.documentElement.scrollWidth <= window.innerWidth + 1 && !!document.querySelector('[data-chart="route:/api/"] svg')`)
	b.shot("charts-routes-390-dark.png")
	b.dark(false)
	b.eval(`location.hash = "#kv/app/config.json"`)
	b.waitFor(10*time.Second, "a key at a phone's width", `!!document.getElementById("kv-shown") && document.documentElement.scrollWidth <= window.innerWidth + 1`)
	b.shot("kv-390.png")
	b.do("back to 1280×800", chromedp.EmulateViewport(1280, 800))

	// 200 routes: every one gets its charts from the same one request a
	// second, not a request per route.
	for i := range 200 {
		put(t, fmt.Sprintf("%s/v1/kv/pier/routes/r%03d", base, i), fmt.Sprintf(`{"path":"/r%03d/","service":"api"}`, i))
	}
	b.eval(`location.hash = "#routes"`)
	b.waitFor(chartWait, "201 routes with charts", `[...document.querySelectorAll('[data-chart^="route:"]')].filter(c => c.querySelector('svg')).length >= 201`)
	b.eval(`performance.clearResourceTimings(); performance.setResourceTimingBufferSize(10000)`)
	time.Sleep(3 * time.Second) // a window of the page's own polling, counted below
	counts := b.number(`(() => { const r = performance.getEntriesByType("resource").map(e => new URL(e.name).pathname);
		return r.filter(p => p === "/v1/pier/history").length * 1000 + r.filter(p => p !== "/v1/pier/history").length })()`)
	if hist, other := int(counts)/1000, int(counts)%1000; hist < 1 || hist > 5 || other > 5 {
		t.Errorf("in 3 s with 201 routes the page made %d history requests and %d others, want about one of each a second", hist, other)
	}
	b.shotView("charts-200-routes-1280.png")
	b.noConsoleErrors()
}

// TestWebUIToken: with ACLs on, the UI asks for a token once, refuses an
// unknown one with the agent's reason, shows what the token may read, and
// shows a write's 403 reason.
func TestWebUIToken(t *testing.T) {
	chromium(t)
	cfg := filepath.Join(t.TempDir(), "pier.yaml")
	os.WriteFile(cfg, []byte(`
acl:
  enabled: true
  default_policy: deny
  tokens:
    initial_management: root-secret
  tokens_list:
    - secret: reader-secret
      description: reads app/ and services
      rules:
        key_prefix:
          app/: read
        service_prefix:
          "": read
        node_prefix:
          "": read
`), 0o600)
	a := startAgent(t, "-dev", "-node", "aclnode", "-config-file", cfg)
	base := "http://" + a.addr
	for _, kv := range [][2]string{{"app/flag", "on"}, {"secret/db", "hunter2"}} {
		if code, body := apiDo(t, "PUT", base+"/v1/kv/"+kv[0], "root-secret", kv[1]); code != 200 {
			t.Fatalf("PUT %s: %d %s", kv[0], code, body)
		}
	}

	b := newBrowser(t, base+"/ui/", 1280, 800)
	b.waitFor(15*time.Second, "the token prompt", `!!document.getElementById("token-dialog") && document.getElementById("token-dialog").open`)
	b.shot("token-prompt-1280.png")
	b.do("an unknown token", chromedp.SendKeys("#token-input", "no-such-token"), chromedp.Click("#token-use"))
	b.waitFor(10*time.Second, "the refusal's reason", `document.getElementById("token-error").innerText.includes("ACL not found")`)
	b.do("the reader's token", chromedp.SetValue("#token-input", "reader-secret"), chromedp.Click("#token-use"))
	b.waitFor(10*time.Second, "the services with the token", `!document.getElementById("token-dialog") && document.getElementById("token-button").innerText.includes("reads app/") && sessionStorage.getItem("pier-token") === "reader-secret"`)

	// Only what the token reads: it may not list the root (Consul's rule
	// for a list is read on its prefix), so the page says so and offers a
	// path; app/ it may list; secret/ it may not read.
	b.eval(`location.hash = "#kv/"`)
	b.waitFor(10*time.Second, "the root refused with its reason", `document.querySelector('[data-kv-folder=""]').innerText.includes("may not list this folder (Permission denied)") && !document.querySelector('a[href="#kv/secret/"]')`)
	b.do("open app/ by its path", chromedp.SetValue("#kv-open", "app/"), chromedp.Click(`form[aria-label="Open a path"] button`))
	b.waitFor(10*time.Second, "app/ listed", `!!document.querySelector('a[href="#kv/app/flag"]')`)
	b.eval(`location.hash = "#kv/secret/db"`)
	b.waitFor(10*time.Second, "secret/db refused", `document.getElementById("error").innerText.includes("Permission denied") && !document.body.innerText.includes("hunter2")`)
	// A write it may not make shows the 403's reason by the field.
	b.eval(`location.hash = "#kv/app/flag"`)
	b.waitFor(10*time.Second, "the key", `!!document.getElementById("kv-value")`)
	b.do("save", chromedp.SetValue("#kv-value", "off"), chromedp.Click("#kv-save"))
	b.waitFor(10*time.Second, "the 403 reason", `document.getElementById("kv-value-error").innerText.includes("Permission denied")`)
	if _, v := kvRaw(t, base, "app/flag", "root-secret"); v != "on" {
		t.Fatalf("a refused write changed the key: %q", v)
	}
	b.shot("token-403-1280.png")

	// The charts' endpoint answers only the series the token may read: the
	// reader sees the node and the services, the anonymous token nothing.
	for _, c := range []struct {
		token string
		want  bool
	}{{"reader-secret", true}, {"", false}, {"root-secret", true}} {
		var h struct{ Series []struct{ Kind, Name string } }
		eventually.NoError(t, 15*time.Second, "the history as "+c.token, func() error {
			code, body := apiDo(t, "GET", base+"/v1/pier/history", c.token, "")
			if code != 200 {
				return fmt.Errorf("%d %s", code, body)
			}
			json.Unmarshal([]byte(body), &h)
			if got := len(h.Series) > 0; got != c.want {
				return fmt.Errorf("series %v, want some: %v", h.Series, c.want)
			}
			return nil
		})
	}

	// Asked once: a reload keeps the token and asks nothing.
	b.do("reload", chromedp.Reload())
	b.waitFor(10*time.Second, "no prompt after a reload", `!document.getElementById("token-dialog") && document.getElementById("token-button").innerText.includes("reads app/")`)
	b.noConsoleErrors()
}
