// Package promsd checks pier's Consul-compatible API against Prometheus's
// own Consul service discovery (github.com/prometheus/prometheus/discovery/consul),
// the code behind consul_sd_configs. It is a module of its own so that
// Prometheus's dependencies stay out of pier's go.mod; .ci/run tests it.
// It exists because Debian's prometheus package is built without Consul
// discovery, so cmd/pier's end-to-end test with the real server cannot
// cover consul_sd_configs there.
package promsd
