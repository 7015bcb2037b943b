package ui

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestServesFilesWithTypes(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("GET /ui/", Handler("/ui/"))
	mux.Handle("GET /ui", Redirect())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	cases := []struct {
		path, ctype, body string
		code              int
	}{
		{"/ui/", "text/html; charset=utf-8", "<title>pier</title>", 200},
		{"/ui/index.html", "", "", 301}, // FileServer's canonical form is /ui/
		{"/ui/style.css", "text/css; charset=utf-8", "--crit", 200},
		{"/ui/app.js", "javascript", "/v1/health/service/", 200}, // text/ or application/, by the system's mime.types
		{"/ui/nonesuch.js", "", "", 404},
		{"/ui", "", "", 301},
	}
	for _, c := range cases {
		resp, err := noRedirect.Get(srv.URL + c.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code {
			t.Errorf("%s: %d, want %d", c.path, resp.StatusCode, c.code)
			continue
		}
		if c.code == 301 && c.path == "/ui" && resp.Header.Get("Location") != "/ui/" {
			t.Errorf("/ui redirects to %q", resp.Header.Get("Location"))
		}
		if ct := resp.Header.Get("Content-Type"); c.ctype != "" && ct != c.ctype && (c.ctype != "javascript" || !strings.Contains(ct, "/javascript")) {
			t.Errorf("%s: Content-Type %q, want %q", c.path, resp.Header.Get("Content-Type"), c.ctype)
		}
		if !strings.Contains(string(body), c.body) {
			t.Errorf("%s: body lacks %q", c.path, c.body)
		}
		if c.code == 200 && resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", c.path)
		}
	}
}

// TestOffline: the UI loads nothing from elsewhere, so that it works on an
// air-gapped network. The only absolute URL allowed is the SVG namespace,
// which is a name, not a download.
func TestOffline(t *testing.T) {
	abs := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(`)
	n := 0
	err := fs.WalkDir(Files(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(Files(), path)
		if err != nil {
			return err
		}
		s := strings.ReplaceAll(string(b), `"http://www.w3.org/2000/svg"`, `""`)
		for _, m := range abs.FindAllString(s, -1) {
			t.Errorf("%s refers to %q: the UI must work offline", path, m)
		}
		for _, m := range []string{"http://", "https://"} {
			if strings.Contains(s, m) {
				t.Errorf("%s contains %q", path, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Errorf("%d embedded files, want index.html, style.css and app.js", n)
	}
}
