package ui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Files returns the embedded files, rooted at the directory served as /ui/.
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}

// Handler serves the UI's files for requests under prefix (such as "/ui/").
// The pages are read-only: it answers GET and HEAD only, as the mux pattern
// it is mounted with says.
func Handler(prefix string) http.Handler {
	files := http.StripPrefix(prefix, http.FileServerFS(Files()))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// The files change only with the binary; revalidate so that an
		// upgraded agent serves its own UI at once.
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		// Everything comes from the agent itself: no CDN, no fonts.
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
		files.ServeHTTP(w, r)
	})
}

// Redirect sends /ui to /ui/, where the relative links of the pages work.
func Redirect() http.Handler {
	return http.RedirectHandler("/ui/", http.StatusMovedPermanently)
}
