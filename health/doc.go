// Package health runs this node's active health checks: HTTP, TCP, gRPC
// (grpc.health.v1), TTL and, only when enabled, script checks.
//
// A Runner watches the catalog (it wakes on Snapshot().Changed()), keeps one
// goroutine per check of this node, and reports each result through the small
// Catalog interface that *registry.Registry satisfies. Checks are spread over
// their interval with a random stagger so that thousands of checks do not fire
// together, each probe has its own timeout so that a hanging target delays
// nothing else, and Consul's thresholds (SuccessBeforePassing,
// FailuresBeforeWarning, FailuresBeforeCritical) keep a flapping target from
// producing a stream of changes. A change of status is reported at once; a
// change of output alone at most once per OutputUpdateInterval, as Consul's
// check_update_interval does. DeregisterCriticalServiceAfter removes a service
// whose check stayed critical that long.
//
// This package knows nothing of gossip or HTTP APIs: what the catalog does
// with a status (publish it, gossip it) is the registry's business.
package health
