package api

import (
	"crypto/sha256"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pier-dev/pier/registry/acl"
)

// The agent cache (?cached), as Consul's for the three endpoints that use
// it here: /v1/catalog/services, /v1/catalog/service/:name and
// /v1/health/service/:name. In Consul these are background-refreshing
// cache types: after the first request (a MISS) the agent keeps the entry
// current with a blocking query to the servers, and later requests are
// HITs, with Age 0 while that refresh is in contact (Age counts from when
// it lost contact). Cache-Control max-age and must-revalidate do not apply
// to such types, and stale-if-error only when the refresh fails.
//
// pier answers these endpoints from the agent's own snapshot, which gossip
// keeps current: that snapshot is the always-refreshed entry, never out of
// contact. So the cache only remembers which requests it has seen (for
// MISS, then HIT), Age is 0, and max-age, must-revalidate and
// stale-if-error change nothing, exactly as they change nothing for these
// types in Consul; a malformed Cache-Control is refused as Consul does.
const (
	cacheMaxEntries = 10000          // requests remembered; the least recently used goes first
	cacheEntryTTL   = 72 * time.Hour // unused this long, an entry is forgotten (Consul's LastGetTTL)
)

type agentCache struct {
	mu      sync.Mutex
	entries map[string]time.Time // key → last use
}

func newAgentCache() *agentCache { return &agentCache{entries: map[string]time.Time{}} }

// touch records a use of key and answers whether it was already there.
func (c *agentCache) touch(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	last, hit := c.entries[key]
	if hit && now.Sub(last) > cacheEntryTTL {
		hit = false
	}
	if !hit && len(c.entries) >= cacheMaxEntries {
		c.evictLocked(now)
	}
	c.entries[key] = now
	return hit
}

// evictLocked drops expired entries, and the least recently used one if
// none had expired; c.mu held.
func (c *agentCache) evictLocked(now time.Time) {
	var oldest string
	var at time.Time
	for k, t := range c.entries {
		if now.Sub(t) > cacheEntryTTL {
			delete(c.entries, k)
			continue
		}
		if oldest == "" || t.Before(at) {
			oldest, at = k, t
		}
	}
	if len(c.entries) >= cacheMaxEntries {
		delete(c.entries, oldest)
	}
}

// cacheKey names a request's answer: its path and query, less the
// parameters of the cache and of blocking, and its token (hashed: the key
// must not hold a secret), since answers are filtered by token.
func cacheKey(r *http.Request) string {
	q := r.URL.Query()
	for _, p := range []string{"cached", "index", "wait", "pretty", "token"} {
		q.Del(p)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(r.URL.Path)
	for _, k := range keys {
		vs := q[k]
		sort.Strings(vs)
		for _, v := range vs {
			b.WriteString("&" + url.QueryEscape(k) + "=" + url.QueryEscape(v))
		}
	}
	h := sha256.Sum256([]byte(acl.RequestToken(r)))
	b.Write(h[:8])
	return b.String()
}

// validCacheControl checks the directives Consul reads: max-age and
// stale-if-error take whole seconds.
func validCacheControl(raw string) bool {
	for _, d := range strings.Split(strings.ToLower(raw), ",") {
		d = strings.TrimSpace(d)
		for _, p := range []string{"max-age=", "stale-if-error="} {
			if v, ok := strings.CutPrefix(d, p); ok {
				if _, err := strconv.Atoi(v); err != nil {
					return false
				}
			}
		}
	}
	return true
}

// cached wraps one of the cache's endpoints.
func (s *Server) cached(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !validCacheControl(r.Header.Get("Cache-Control")) {
			httpError(w, http.StatusBadRequest, "Invalid Cache-Control header.")
			return
		}
		q := r.URL.Query()
		if _, ok := q["cached"]; !ok {
			h(w, r)
			return
		}
		if _, ok := q["consistent"]; ok {
			httpError(w, http.StatusBadRequest, "Cannot specify ?cached with ?consistent, conflicting semantics.")
			return
		}
		hit := s.cache.touch(cacheKey(r), time.Now())
		// A blocking request at or past the entry's index waits for a new
		// answer, as Consul's cache does: that answer is not a hit. Whether
		// it will wait is known from the answer without ?index.
		if idx, err := strconv.ParseUint(q.Get("index"), 10, 64); hit && err == nil && idx > 0 {
			nb := r.Clone(r.Context())
			nq := nb.URL.Query()
			nq.Del("index")
			nb.URL.RawQuery = nq.Encode()
			rec := &headerRecorder{ResponseWriter: w, h: http.Header{}}
			h(rec, nb)
			cur, _ := strconv.ParseUint(rec.h.Get("X-Consul-Index"), 10, 64)
			if rec.code == http.StatusOK && idx < cur {
				rec.flushTo(w)
				return
			}
			hit = false
		}
		w.Header().Set("X-Cache", "MISS")
		if hit {
			w.Header().Set("X-Cache", "HIT")
			w.Header().Set("Age", "0") // the snapshot is current: see the comment at the top
		}
		h(w, r)
	}
}

// headerRecorder keeps a whole answer to send it later, or not at all.
type headerRecorder struct {
	http.ResponseWriter // for Unwrap only; nothing is written to it
	h                   http.Header
	code                int
	body                []byte
}

func (r *headerRecorder) Header() http.Header { return r.h }
func (r *headerRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *headerRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	r.body = append(r.body, b...)
	return len(b), nil
}

func (r *headerRecorder) flushTo(w http.ResponseWriter) {
	for k, v := range r.h {
		w.Header()[k] = v
	}
	w.Header().Set("X-Cache", "HIT")
	w.Header().Set("Age", "0")
	w.WriteHeader(r.code)
	w.Write(r.body)
}
