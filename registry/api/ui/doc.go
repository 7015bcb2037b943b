// Package ui owns the agent's web UI: plain HTML, CSS and JavaScript files
// embedded in the binary and served under /ui/ on the HTTP API. The pages
// use only the public JSON API (catalog, health, KV, sessions, operator,
// /v1/pier/routes and /v1/pier/history) with the token the user gave, so
// the UI needs no build step, no CDN and no network beyond the agent
// itself, and it can do nothing the token could not do with curl. Another
// datacenter is read through this agent with ?dc=, as curl would.
package ui
