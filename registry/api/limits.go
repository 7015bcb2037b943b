package api

import (
	"net/http"
	"net/netip"
	"sync"
)

// clientLimiter bounds the requests one client IP address has in progress
// at once: Consul's limits.http_max_conns_per_client. Consul counts TCP
// connections; pier counts requests in progress, which is the same bound on
// HTTP/1.1 (a connection carries one request at a time) but leaves a
// client's idle pooled connections out of it, and lets the extra request be
// answered with a 429 the client can read instead of a closed connection.
// What it bounds is what a client can hold open for long: blocking queries,
// each a goroutine and a timer for up to MaxWait.
type clientLimiter struct {
	max int
	mu  sync.Mutex
	n   map[netip.Addr]int // requests in progress by client; no entry at 0
}

func newClientLimiter(max int) *clientLimiter {
	if max <= 0 {
		return nil
	}
	return &clientLimiter{max: max, n: map[netip.Addr]int{}}
}

// acquire counts a request from ip; false means ip is at the limit and the
// request must be refused (and not released).
func (l *clientLimiter) acquire(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip] >= l.max {
		return false
	}
	l.n[ip]++
	return true
}

func (l *clientLimiter) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip] <= 1 {
		delete(l.n, ip) // the map holds only clients with requests in progress
		return
	}
	l.n[ip]--
}

// limit runs next unless the client is over its limit, in which case it
// answers 429 Too Many Requests with a message that names the setting.
func (s *Server) limit(w http.ResponseWriter, r *http.Request, next func(http.ResponseWriter, *http.Request)) {
	if s.lim == nil {
		next(w, r)
		return
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		next(w, r) // not an IP connection (a test's handler call): nothing to count by
		return
	}
	ip := ap.Addr().Unmap()
	if !s.lim.acquire(ip) {
		s.met.limited()
		s.log.Debug("request refused: too many from one client", "client", ip, "limit", s.lim.max)
		httpError(w, http.StatusTooManyRequests,
			"Too many concurrent requests from %s: at most %d at once (limits.http_max_conns_per_client)", ip, s.lim.max)
		return
	}
	defer s.lim.release(ip)
	next(w, r)
}
