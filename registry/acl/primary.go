package acl

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
)

// Writes of global objects made in a secondary datacenter are the
// primary's, as Consul forwards them: policies and roles always, tokens
// unless Local (judged by the body's Local on a create or an update, as
// Consul, and by the stored token on a clone or a delete). The wrapper
// runs where the handler would (with servers, this datacenter's leader),
// sends the request as it came, token included, to the primary, and
// answers the primary's answer; before that answer leaves, it waits (at
// most awaitReplicatedFor) until replication has brought the write here,
// so that what was made through a secondary works there at once.

// always is the judge of objects that are always global.
func always(*http.Request) bool { return true }

// toPrimary serves a write of kind ("policy", "role", "token") in the
// primary when this is a secondary datacenter and global(r) says it is
// global; else h serves it here.
func (s *Endpoints) toPrimary(kind string, h http.HandlerFunc, global func(*http.Request) bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a := s.acl
		if !a.secondary() {
			h(w, r)
			return
		}
		if kind == "token" && !a.localTokens() {
			// Every token is the primary's (Consul: token replication off).
			if r.URL.Path == "/v1/acl/token" && !global(r) {
				httpError(w, http.StatusInternalServerError, "Local tokens are disabled")
				return
			}
		} else if !global(r) {
			h(w, r)
			return
		}
		if a.primary == nil {
			httpError(w, http.StatusInternalServerError, "No path to datacenter %q", a.primaryDC)
			return
		}
		a.primary.Forward(&awaitWriter{ResponseWriter: w, a: a, r: r, kind: kind}, r, a.primaryDC)
	}
}

// tokenRead serves a read of tokens in the primary when this datacenter
// keeps no global tokens (a secondary that does not replicate them, as
// Consul forwards its token reads then), unless the token asked for is
// one this agent has (its configuration's, or a local one).
func (s *Endpoints) tokenRead(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a := s.acl
		if a == nil || a.primary == nil {
			h(w, r)
			return
		}
		t := a.current()
		if !a.askPrimary(t) {
			h(w, r)
			return
		}
		switch id := r.PathValue("id"); {
		case r.URL.Path == tokenSelfPath && a.lookupIn(t, RequestToken(r)) != nil:
			h(w, r)
			return
		case id != "" && t.tokens[id] != nil:
			h(w, r)
			return
		}
		a.primary.Forward(w, r, a.primaryDC)
	}
}

// peekJSON decodes r's body into v and puts the body back for the
// handler; false when it is not JSON (the handler answers that).
func (s *Endpoints) peekJSON(r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, s.maxBody+1))
	r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.ContentLength = int64(len(b))
	return err == nil && json.Unmarshal(b, v) == nil
}

// globalByBody judges a token's create or update by the body's Local.
func (s *Endpoints) globalByBody(r *http.Request) bool {
	var in struct{ Local bool }
	return !s.peekJSON(r, &in) || !in.Local
}

// globalClone: a clone is of a global token that this datacenter has.
func (s *Endpoints) globalClone(r *http.Request) bool {
	te := s.acl.current().tokens[r.PathValue("id")]
	return te != nil && !te.static && !te.view.Local
}

// globalDelete: a delete is the primary's unless the token is one of this
// datacenter's own (local, or from its configuration).
func (s *Endpoints) globalDelete(r *http.Request) bool {
	te := s.acl.current().tokens[r.PathValue("id")]
	return te == nil || !te.static && !te.view.Local
}

// awaitWriter holds the primary's answer to a write until replication has
// applied the index it names (RemoteIndexHeader), so that the write shows
// here when the answer leaves.
type awaitWriter struct {
	http.ResponseWriter
	a     *Authorizer
	r     *http.Request
	kind  string
	wrote bool
}

func (w *awaitWriter) WriteHeader(code int) {
	if !w.wrote {
		w.wrote = true
		h := w.Header()
		if idx, err := strconv.ParseUint(h.Get(RemoteIndexHeader), 10, 64); err == nil && code == http.StatusOK {
			w.a.awaitReplicated(w.r.Context(), idx, w.kind)
		}
		h.Del(RemoteIndexHeader)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *awaitWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap is for http.ResponseController.
func (w *awaitWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush passes a flush on, for the forwarding proxy.
func (w *awaitWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
