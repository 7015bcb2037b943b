// Package metrics builds the Prometheus registry an agent exposes, its
// /metrics handler, and Consul's /v1/agent/metrics view of the same registry. It holds no metrics of its own beyond the Go runtime and
// process collectors: every other package declares its collectors in its
// own metrics.go against the prometheus.Registerer passed in its Config, so
// that two agents in one process (the tests) never share a series and a
// nil Registerer turns a package's metrics off.
package metrics
