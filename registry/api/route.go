package api

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pier-dev/pier/registry/acl"
)

// Every route declares, where it is registered, the permission a request
// to it needs when ACLs are on; the authorize gate (acl.go) looks up the
// route the mux would pick and asks that permission. A route cannot be
// registered without one: route, writes and Handle are the only ways onto
// the mux (TestEveryRouteHasPermission checks both).

// lazyMux is a ServeMux built at the first request rather than as routes
// are registered. ServeMux checks every new pattern against those it holds
// (and records its caller, for the message of a conflict), which for the
// API's 330 routes was a tenth of the CPU an agent needs to start; most
// agents serve their first request well after they start, if ever, and
// deploy/bench/gossip.sh starts 99 at once. A pattern registered after the
// first request goes straight onto the built mux. The server port's mux
// (Server.inner, the Raft-backed routes again) is one too: it is built on
// every agent with Consensus, clients included, and served only on servers.
type lazyMux struct {
	mu      sync.Mutex
	pending []pendingRoute
	built   atomic.Pointer[http.ServeMux]
}

type pendingRoute struct {
	pattern string
	h       http.Handler
}

func (l *lazyMux) Handle(pattern string, h http.Handler) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.built.Load(); m != nil {
		m.Handle(pattern, h)
		return
	}
	l.pending = append(l.pending, pendingRoute{pattern, h})
}

// mux builds the ServeMux the first time; a conflict between two patterns
// panics there, as ServeMux.Handle would have (the package's tests serve
// requests, so they find one).
func (l *lazyMux) mux() *http.ServeMux {
	if m := l.built.Load(); m != nil {
		return m
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.built.Load(); m != nil {
		return m
	}
	m := http.NewServeMux()
	for _, p := range l.pending {
		m.Handle(p.pattern, p.h)
	}
	l.pending = nil
	l.built.Store(m)
	return m
}

func (l *lazyMux) Handler(r *http.Request) (http.Handler, string) { return l.mux().Handler(r) }

func (l *lazyMux) ServeHTTP(w http.ResponseWriter, r *http.Request) { l.mux().ServeHTTP(w, r) }

// route is what the gate knows of one registered pattern.
type route struct {
	prefix string // the pattern's path up to its first wildcard
	perm   acl.Perm
}

// handle registers h under pattern (a net/http ServeMux pattern) with the
// permission a request to it needs.
func (s *Server) handle(pattern string, h http.Handler, perm acl.Perm) {
	s.mux.Handle(pattern, h)
	path, _, _ := strings.Cut(patternPath(pattern), "{")
	s.perms[pattern] = route{prefix: path, perm: perm}
}

// patternPath is a pattern without its method.
func patternPath(pattern string) string {
	if i := strings.IndexAny(pattern, " \t"); i >= 0 {
		return strings.TrimLeft(pattern[i:], " \t")
	}
	return pattern
}

func (s *Server) route(pattern string, h http.HandlerFunc, perm acl.Perm) { s.handle(pattern, h, perm) }

// raftRoute registers a Raft-backed route, which the server port serves
// too (ServerPortHandler).
func (s *Server) raftRoute(pattern string, h http.HandlerFunc, perm acl.Perm) {
	s.handle(pattern, h, perm)
	if s.inner != nil {
		s.inner.Handle(pattern, h)
	}
}

// raftWrites is writes for a Raft-backed route.
func (s *Server) raftWrites(path string, h http.HandlerFunc, perm acl.Perm) {
	s.raftRoute("PUT "+path, h, perm)
	s.raftRoute("POST "+path, h, perm)
}

// writes registers a write endpoint for PUT and POST: Consul's clients send
// PUT, the seed's curl commands POST.
func (s *Server) writes(path string, h http.HandlerFunc, perm acl.Perm) {
	s.handle("PUT "+path, h, perm)
	s.handle("POST "+path, h, perm)
}

// Handle adds a handler under pattern (a net/http ServeMux pattern), for
// parts such as /metrics and the UI that other packages own; call it before
// the Server serves. It needs no
// token outside /v1/ (as Consul serves its UI), operator:read under
// /debug/, and a management token under /v1/: use HandlePerm to say what
// less a /v1/ route needs.
func (s *Server) Handle(pattern string, h http.Handler) {
	path := patternPath(pattern)
	perm := acl.ManagementOnly
	switch {
	case strings.HasPrefix(path, "/debug/"):
		perm = operatorRead
	case !strings.HasPrefix(path, "/v1/"):
		perm = acl.Anyone
	}
	s.handle(pattern, h, perm)
}

// HandlePerm is Handle with the permission the route needs.
func (s *Server) HandlePerm(pattern string, h http.Handler, perm acl.Perm) {
	s.handle(pattern, h, perm)
}

// allowed decides whether p may make r: a management token may do
// anything; a request a route serves needs that route's permission; one
// that no route serves runs no handler, so it passes on to the mux's 404 or
// 405, as Consul routes before it checks a token.
func (s *Server) allowed(p *acl.Policy, r *http.Request) bool {
	path := r.URL.Path
	if p.Management() {
		return true
	}
	// The mux answers the pattern it would serve r with (also when it
	// redirects r to a cleaned path); the prefix check keeps a redirect of
	// /x to /x/ from taking the permission of /x/.
	if _, pattern := s.mux.Handler(r); pattern != "" {
		if rt, ok := s.perms[pattern]; ok && strings.HasPrefix(path, rt.prefix) {
			return rt.perm != nil && rt.perm(p, r, path[len(rt.prefix):])
		}
	}
	return true
}

// The permissions of this package's routes. arg is the trailing
// wildcard's value: a service ID, a service or node name, a key.

func isRead(r *http.Request) bool { return r.Method == http.MethodGet || r.Method == http.MethodHead }

func serviceRead(p *acl.Policy, _ *http.Request, name string) bool { return p.ServiceRead(name) }
func nodeRead(p *acl.Policy, _ *http.Request, name string) bool    { return p.NodeRead(name) }
func anyNodeRead(p *acl.Policy, _ *http.Request, _ string) bool    { return p.NodeRead("") }
func operatorRead(p *acl.Policy, _ *http.Request, _ string) bool   { return p.OperatorRead() }
func operatorWrite(p *acl.Policy, _ *http.Request, _ string) bool  { return p.OperatorWrite() }
func keyringRead(p *acl.Policy, _ *http.Request, _ string) bool    { return p.KeyringRead() }
func keyringWrite(p *acl.Policy, _ *http.Request, _ string) bool   { return p.KeyringWrite() }

// keyAccess is read on the key for reads, write for the rest.
func keyAccess(p *acl.Policy, r *http.Request, key string) bool {
	if isRead(r) {
		return p.KeyRead(key)
	}
	return p.KeyWrite(key)
}

func (s *Server) agentRead(p *acl.Policy, _ *http.Request, _ string) bool {
	return p.AgentRead(s.self())
}

func (s *Server) agentWrite(p *acl.Policy, _ *http.Request, _ string) bool {
	return p.AgentWrite(s.self())
}

// nodeAndAgentWrite is for what changes this node for the cluster
// (maintenance, leave).
func (s *Server) nodeAndAgentWrite(p *acl.Policy, _ *http.Request, _ string) bool {
	return p.NodeWrite(s.self()) && p.AgentWrite(s.self())
}

// serviceIDRead and serviceIDWrite take a local service's ID.
func (s *Server) serviceIDRead(p *acl.Policy, _ *http.Request, id string) bool {
	return p.ServiceRead(s.serviceName(id))
}

func (s *Server) serviceIDWrite(p *acl.Policy, _ *http.Request, id string) bool {
	return p.ServiceWrite(s.serviceName(id))
}

// checkIDWrite takes a local check's ID.
func (s *Server) checkIDWrite(p *acl.Policy, _ *http.Request, id string) bool {
	return s.checkWrite(p, id)
}
