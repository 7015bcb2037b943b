package api

import (
	"context"
	"net/http"
	"strings"

	"github.com/pier-dev/pier/registry"
)

// The front door's ACME certificates, account keys and locks live in the
// servers' KV store under ACMEKVPrefix, which /v1/kv hides from every token
// (it is under registry.ReservedKVPrefix). The front door reaches them
// through ACMEKVPath, Consul's KV verbs (?raw, ?keys, ?recurse, ?acquire,
// ?release, ?flags) on keys relative to the prefix, with the KV handlers
// themselves, so that a client agent forwards to the servers and a
// follower to the leader as a /v1/kv request would be. The private keys
// are behind operator:write, read or write: a token that may remove a Raft
// peer is trusted with the cluster's TLS keys, and a KV rule, however wide,
// is not.

// ACMEKVPrefix is where the ACME storage keeps its keys.
const ACMEKVPrefix = registry.ACMEKVPrefix

// ACMEKVPath is the API path of the ACME storage; the key follows it.
const ACMEKVPath = "/v1/pier/acme/kv/"

type acmeKey struct{}

// acmeRequest reports whether r came through ACMEKVPath (a mark that only
// this package sets, after the route's permission was checked).
func acmeRequest(r *http.Request) bool { return r.Context().Value(acmeKey{}) != nil }

// hiddenKey reports whether key is one the KV handlers refuse for r: the
// agent's own keys, but for the ACME keys asked for through ACMEKVPath.
func hiddenKey(r *http.Request, key string) bool {
	return reserved(key) && !(acmeRequest(r) && strings.HasPrefix(key, ACMEKVPrefix))
}

func (s *Server) acmeRoutes() {
	s.raftRoute("GET "+ACMEKVPath+"{key...}", acmeKV(s.raftKVGet), operatorWrite)
	s.raftWrites(ACMEKVPath+"{key...}", acmeKV(s.raftKVPut), operatorWrite)
	s.raftRoute("DELETE "+ACMEKVPath+"{key...}", acmeKV(s.raftKVDelete), operatorWrite)
}

// acmeKV serves an ACME storage request with a KV handler: the key moves
// under ACMEKVPrefix. A forward sends r's URL, which still names
// ACMEKVPath, so the server that takes it over does the same.
func acmeKV(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("key")
		if strings.Contains(key, "..") {
			httpError(w, http.StatusBadRequest, "Invalid ACME storage key %q", key)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), acmeKey{}, true))
		r.SetPathValue("key", ACMEKVPrefix+key)
		h(w, r)
	}
}
