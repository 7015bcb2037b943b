// Package lb owns pier's load balancing state: one Backend per address,
// which lives across catalog updates (its fasthttp.HostClient and keep-alive
// connections, its count of in-flight requests, its passive-failure state;
// a plain HTTP client and one client per set of upstream TLS settings the
// routes use, all sharing those counts), and one Pool per service: an
// immutable slice of the service's healthy backends with their weights,
// and Pick, a least-connections choice scaled by weight that neither
// allocates nor locks. A urlprefix- tag gets a Pool of its own, of the
// instances that carry it.
//
// A Balancer rebuilds the whole Table of pools from a registry snapshot
// whenever the catalog changes and swaps it in atomically. Changes coalesce:
// the first one is applied at once, and a burst of them costs one rebuild
// from the newest snapshot ("latest wins"). State that must survive a
// rebuild is kept in the Backend objects, which the rebuild reuses by
// address; a backend that leaves every pool gets no new requests and its
// in-flight requests finish on the client they started with.
//
// This package reads the catalog only through registry.Snapshot and knows
// nothing of routes, headers or the front door: that is package proxy. It
// must not allocate or lock in Pick, and must not import proxy.
package lb
