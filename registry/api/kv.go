package api

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/pier-dev/pier/registry"
)

// kvPair is Consul's KVPair.
type kvPair struct {
	LockIndex   uint64
	Key         string
	Flags       uint64
	Value       []byte // base64 in JSON; null when empty, as Consul
	Session     string `json:",omitempty"` // the lock holder (agreed keys only)
	CreateIndex uint64
	ModifyIndex uint64
}

func toKVPair(e *registry.KVEntry) kvPair {
	p := kvPair{Key: e.Key, Flags: e.Flags, Session: e.Session, LockIndex: e.LockIndex,
		CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex}
	if len(e.Value) > 0 {
		p.Value = e.Value
	}
	return p
}

func (s *Server) kvRoutes() {
	s.route("GET /v1/kv/{key...}", s.kvGet, keyAccess)
	s.writes("/v1/kv/{key...}", s.kvPut, keyAccess)
	s.route("DELETE /v1/kv/{key...}", s.kvDelete, keyAccess)
}

func (s *Server) kvGet(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	snap := s.block(w, r, q, kvView())
	v := r.URL.Query()
	switch {
	case v.Has("keys"):
		keys := visibleKeys(snap.KVKeys(key, v.Get("separator")))
		if len(keys) == 0 {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		writeJSON(w, r, keys)
	case v.Has("recurse"):
		list := visibleEntries(snap.KVList(key))
		if len(list) == 0 {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		out := make([]kvPair, 0, len(list))
		for _, e := range list {
			out = append(out, toKVPair(e))
		}
		writeJSON(w, r, out)
	default:
		e, found := snap.KV(key)
		if !found || reserved(key) {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		if v.Has("raw") {
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(e.Value)
			return
		}
		writeJSON(w, r, []kvPair{toKVPair(e)})
	}
}

// uintParam reads an optional unsigned query parameter; false means an
// error answer was sent.
func uintParam(w http.ResponseWriter, r *http.Request, name string) (*uint64, bool) {
	v := r.URL.Query()
	if !v.Has(name) {
		return nil, true
	}
	n, err := strconv.ParseUint(v.Get(name), 10, 64)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%s: %q is not a non-negative integer", name, v.Get(name))
		return nil, false
	}
	return &n, true
}

func (s *Server) kvPut(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if key == "" {
		httpError(w, http.StatusBadRequest, "Missing key name")
		return
	}
	if reserved(key) {
		refuseReserved(w)
		return
	}
	flags, ok := uintParam(w, r, "flags")
	if !ok {
		return
	}
	cas, ok := uintParam(w, r, "cas")
	if !ok {
		return
	}
	value, ok := readKVValue(w, r)
	if !ok {
		return
	}
	var f uint64
	if flags != nil {
		f = *flags
	}
	done, err := s.reg.KVPut(key, value, f, cas)
	if err != nil {
		writeError(w, "Invalid KV write", err)
		return
	}
	writeJSON(w, r, done)
}

func (s *Server) kvDelete(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	cas, ok := uintParam(w, r, "cas")
	if !ok {
		return
	}
	recurse := r.URL.Query().Has("recurse")
	if key == "" && !recurse {
		httpError(w, http.StatusBadRequest, "Missing key name")
		return
	}
	if reserved(key) {
		refuseReserved(w)
		return
	}
	done, err := s.reg.KVDelete(key, recurse, cas)
	if err != nil {
		writeError(w, "Invalid KV delete", err)
		return
	}
	writeJSON(w, r, done)
}

// Keys under registry.ReservedKVPrefix are the agent's own (the ACL store,
// registry/acl, holds token secrets there): the KV API lists and reads them
// as absent and refuses to write them, whatever the token's key rules say.
func reserved(key string) bool { return strings.HasPrefix(key, registry.ReservedKVPrefix) }

func refuseReserved(w http.ResponseWriter) {
	httpError(w, http.StatusBadRequest, "Invalid KV write: keys under %s are reserved for the agent", registry.ReservedKVPrefix)
}

func visibleKeys(keys []string) []string {
	out := keys[:0:0]
	for _, k := range keys {
		if !reserved(k) {
			out = append(out, k)
		}
	}
	return out
}

func visibleEntries(list []*registry.KVEntry) []*registry.KVEntry {
	out := list[:0:0]
	for _, e := range list {
		if !reserved(e.Key) {
			out = append(out, e)
		}
	}
	return out
}

// readKVValue reads a KV write's body, at most registry.MaxKVValue bytes:
// a larger one is Consul's 413, any other failure a 400.
func readKVValue(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, registry.MaxKVValue))
	if err == nil {
		return value, true
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		httpError(w, http.StatusRequestEntityTooLarge, "Value exceeds %d byte limit", registry.MaxKVValue)
	} else {
		httpError(w, http.StatusBadRequest, "Reading request body: %v", err)
	}
	return nil, false
}
