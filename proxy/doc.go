// Package proxy owns pier's front door: a fasthttp server that maps each
// request to a service by host and path prefix (routes from the config file,
// from the KV store under pier/routes/, and from fabio-style urlprefix-
// service tags, in that order of precedence), rewrites the path
// (strip, prepend), sets the forwarding headers, sends the request to a
// backend that package lb picks (over TLS when the route says so), retries what is safe to retry on another
// backend, streams bodies both ways, tunnels WebSocket upgrades, enforces
// the limits a public listener needs, refuses requests framed ambiguously
// (request smuggling, framing.go), and writes the access log. It also
// terminates TLS for the front door (certificates by SNI, reloaded when their
// files change) and redirects plain HTTP to HTTPS when asked.
//
// TCPProxy (tcp*.go) is the front door for bytes: TCP routes (proxy.tcp,
// the KV store under pier/tcp-routes/, urlprefix-:port proto=tcp tags) on
// listeners of their own, opened and closed as the KV and tags change, and SNI
// passthrough (proto=tcp+sni) through a listener wrapper that peeks at each
// ClientHello in front of the TLS listener. It uses the same lb pools and
// passive health as the HTTP routes and keeps its connections in a set of
// its own, so that draining and shutdown can end them.
//
// ACME (acme.go) gets certificates from an RFC 8555 CA through certmagic:
// it answers the challenges on the front door's listeners and hands
// certmagic's certificates to the TLS listener after pier's files. Its
// names are the config's and the hosts of tag and KV routes with tls=acme,
// taken at each rebuild of the route table, never a client's SNI. DNS-01
// (acme_dns.go) writes its TXT records through the same storage, which the
// agent's DNS server answers. Where they are stored and locked is the
// caller's (ACMEConfig.Storage: the agent gives the servers' KV); this
// package must not reach the KV itself.
//
// How connections are served is the engine's (engine.go): on Linux by
// default the event loops (evloop*_linux.go, one per core), which park
// idle connections as bare descriptors and serve the common request and
// its upstream exchange on the loop, handing everything else to
// goroutines with the bytes read, and epoll loops for TCP routes (tcp_loop*_linux.go); or a
// goroutine per connection. HTTP/2 is served by pier's own server
// (h2lean*.go: frames read per connection, a request alone on its
// connection served by the reader, other streams on a pool of workers)
// or by net/http's (http2.server: go). Whatever serves a request, the
// checks, routing, retries and headers are the one path's (begin, framing.go),
// so the engines must not grow rules of their own.
//
// The route table is an immutable value swapped atomically when the
// catalog's tags or KV routes change. State that must survive a route update (in-flight
// counts, passive-failure state, keep-alive connections) must not live
// here: it lives in lb's Backend objects. The request path must not
// allocate for routing, header rewriting or picking a backend.
package proxy
