// Package wan is the servers' WAN pool: a second memberlist pool, with
// memberlist's WAN timings, that only servers join and that crosses
// datacenters, as Consul's serf WAN. Its members are named node.dc, as
// Consul's, and carry the server tags (role=consul, dc, id, port of the
// server port), so that a server knows, for every datacenter, the server
// ports it can forward a request of ?dc= to, and how far each one is by
// Vivaldi network coordinates learned from the pool's own pings.
//
// It owns the pool's membership (join, leave, failure, reconnecting to
// failed members as Serf does), the list of datacenters nearest first and
// the servers of each. It does not forward requests (registry/api does,
// over the server port) and holds no catalog: datacenters share nothing
// but their servers' addresses.
//
// Memberlist callbacks only take a short lock to record a member's state.
package wan
