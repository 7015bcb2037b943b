// Package history owns the short memory behind the web UI's charts: one
// fixed-size ring of points per series (a proxy route, a service, a node),
// filled every Interval by Sources that read what the agent already
// measures, and one endpoint that answers many series at once. It keeps
// nothing on disk and no series for a route, service or node that is gone.
// It must not measure anything itself or touch a request's path: sources
// read counters the proxy and the catalog keep anyway.
package history
