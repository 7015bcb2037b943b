// Package answer writes HTTP answers the way Consul's agent shapes them:
// JSON bodies (indented on ?pretty), one-line plain-text errors, and the
// registry's errors mapped onto status codes. Both the API (registry/api)
// and the ACL endpoints (registry/acl) answer through it, so the two never
// drift apart. It holds no state and imports nothing of pier's but the
// registry's error values.
package answer

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/pier-dev/pier/registry"
)

// JSON answers 200 with v, indented when the client asked for ?pretty.
func JSON(w http.ResponseWriter, r *http.Request, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	if _, ok := r.URL.Query()["pretty"]; ok {
		enc.SetIndent("", "    ")
	}
	enc.Encode(v)
}

// Error answers code with a plain one-line message, as Consul does.
func Error(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	fmt.Fprintf(w, format+"\n", args...)
}

// StoreError maps the registry's errors onto status codes: a field error
// is a 400 after prefix, not found a 404, a full KV store a 413, a
// protected record a 400, anything else (a full disk) a 500.
func StoreError(w http.ResponseWriter, prefix string, err error) {
	var fe *registry.FieldError
	switch {
	case errors.As(err, &fe):
		Error(w, http.StatusBadRequest, "%s: %v", prefix, fe)
	case errors.Is(err, registry.ErrNotFound):
		Error(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, registry.ErrKVFull):
		Error(w, http.StatusRequestEntityTooLarge, "%v", err)
	case errors.Is(err, registry.ErrProtected):
		Error(w, http.StatusBadRequest, "%v", err)
	default:
		Error(w, http.StatusInternalServerError, "%v", err)
	}
}
