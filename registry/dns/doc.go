// Package dns is pier's DNS interface and local resolver, built on
// github.com/miekg/dns.
//
// It owns two kinds of answers. Names under the domain (default "consul.")
// are answered from the catalog, as Consul answers them:
// [tag.]name.service[.dc], _name._tag.service[.dc], node.node[.dc] and
// hex.addr[.dc]. Answers are computed once per catalog snapshot and kept
// packed, so a repeated question costs a map lookup and a copy; they move to
// the next snapshot on the first query after a change. Every other name is
// forwarded to the recursors, tried in order, and the answers are cached
// (positive and negative, RFC 2308) with their TTLs counting down. Recursion
// is offered only to loopback clients unless Config.AllowRecursion widens it.
// No UDP reply is larger than Config.MaxUDPSize, whatever size a query
// advertises: a UDP source is unverified, and a larger reply would amplify a
// spoofed query; what does not fit is trimmed, with TC.
//
// UDP is served by one long-lived goroutine per socket (on Linux one socket
// per CPU shares each address through SO_REUSEPORT), reading and writing in
// batches (recvmmsg/sendmmsg). On Linux those sockets are made with
// x/sys/unix and never enter Go's network poller: a reader takes what is
// queued without blocking and waits in a blocking recvmmsg only when the
// socket is empty, as unbound's threads do. It answers the common case (one question,
// class IN, optional EDNS) straight from the packed answers without
// unpacking the query or allocating; anything else goes through
// miekg/dns's parser, and a query that must be forwarded gets a goroutine of
// its own, so a slow upstream never stalls the read loop. TCP is served by
// miekg/dns's server with the same handler.
//
// Names of another datacenter are asked of Config.Remote (remote.go), on
// the goroutine a forwarded query gets, never on the UDP read loop.
//
// It reads the catalog only through registry.Registry.Snapshot and the
// snapshot's exported methods and never writes to it, never locks it, and
// must not import the API, proxy or lb packages.
package dns
