// Package ui owns the agent's web UI: plain HTML, CSS and JavaScript files
// embedded in the binary and served under /ui/ on the HTTP API. The pages
// read only the public JSON API (catalog, health, agent members and
// /v1/pier/routes) and poll it, so the UI needs no build step, no CDN and
// no network beyond the agent itself, and it can change nothing.
package ui
