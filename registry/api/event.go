package api

import (
	"hash/fnv"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/pier-dev/pier/registry/acl"
)

// Consul's user events (consul event, consul watch -type=event): fired
// through the cluster's gossip, kept by each agent that passes their
// filters, listed by each agent from what it kept.

// UserEvent is Consul's user event, as /v1/event answers it.
type UserEvent struct {
	ID            string
	Name          string
	Payload       []byte
	NodeFilter    string
	ServiceFilter string
	TagFilter     string
	Version       int
	LTime         uint64
}

// Eventer is the part of the cluster that carries user events; the Cluster
// given in Config may implement it. Without it /v1/event answers 404.
type Eventer interface {
	// FireEvent sends e to every agent and answers it with its ID,
	// Version and LTime.
	FireEvent(e UserEvent) (UserEvent, error)
	// Events answers the events this agent kept, oldest first, and a
	// channel closed when it keeps another.
	Events() ([]UserEvent, <-chan struct{})
}

const (
	// maxEventPayload is what Consul's HTTP endpoint takes; the gossip
	// layer's own limit is on the whole event (maxEventSize).
	maxEventPayload = 300
	// maxEventSize is Serf's user-event limit, on the name, payload,
	// filters and the 36-byte ID together.
	maxEventSize = 512
	uuidLen      = 36
)

func (s *Server) eventer() Eventer {
	e, _ := s.cfg.Cluster.(Eventer)
	return e
}

func (s *Server) eventRoutes() {
	if s.eventer() == nil {
		return // unsupported.go answers
	}
	s.route("PUT /v1/event/fire/{name...}", s.eventFire, eventWrite)
	s.route("GET /v1/event/list", s.eventList, acl.Anyone) // filtered by event:read
}

func eventWrite(p *acl.Policy, _ *http.Request, name string) bool { return p.EventWrite(name) }

func (s *Server) eventFire(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	v := r.URL.Query()
	e := UserEvent{Name: r.PathValue("name"), NodeFilter: v.Get("node"), ServiceFilter: v.Get("service"), TagFilter: v.Get("tag")}
	if e.Name == "" {
		httpError(w, http.StatusBadRequest, "Missing name")
		return
	}
	if r.ContentLength < 0 {
		httpError(w, http.StatusBadRequest, "Event payload size must be greater than zero")
		return
	}
	if r.ContentLength > maxEventPayload {
		httpError(w, http.StatusRequestEntityTooLarge,
			"Event payload too large, received %d bytes, max size: %d bytes. User events should be kept small for efficient gossip propagation.",
			r.ContentLength, maxEventPayload)
		return
	}
	if r.ContentLength > 0 {
		body, ok := s.readBody(w, r)
		if !ok {
			return
		}
		e.Payload = body
	}
	if e.TagFilter != "" && e.ServiceFilter == "" {
		httpError(w, http.StatusBadRequest, "tag: Cannot provide tag filter without service filter")
		return
	}
	for _, f := range []struct{ name, re string }{{"node", e.NodeFilter}, {"service", e.ServiceFilter}, {"tag", e.TagFilter}} {
		if f.re == "" {
			continue
		}
		if _, err := regexp.Compile(f.re); err != nil {
			httpError(w, http.StatusBadRequest, "%s: Invalid %s filter: %v", f.name, f.name, err)
			return
		}
	}
	if n := uuidLen + len(e.Name) + len(e.Payload) + len(e.NodeFilter) + len(e.ServiceFilter) + len(e.TagFilter); n > maxEventSize {
		httpError(w, http.StatusBadRequest, "user event exceeds the limit of %d bytes (name, payload, filters and ID: %d)", maxEventSize, n)
		return
	}
	out, err := s.eventer().FireEvent(e)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, r, out)
}

// eventList answers this agent's events, oldest first. As in Consul, the
// index is made from the last listed event's ID, so it does not grow: a
// blocking query waits while the index is the one it was given.
func (s *Server) eventList(w http.ResponseWriter, r *http.Request) {
	q, ok := s.parseQuery(w, r)
	if !ok {
		return
	}
	name := r.URL.Query().Get("name")
	p := acl.PolicyOf(r)
	var timer <-chan time.Time
	if q.minIndex > 0 {
		wait := q.wait + rand.N(q.wait/16+1)
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
		s.met.blockStart()
		defer s.met.blockEnd()
	}
	for {
		all, changed := s.eventer().Events()
		out := make([]UserEvent, 0, len(all))
		removed := false
		for _, e := range all {
			if name != "" && e.Name != name {
				continue
			}
			if p != nil && !p.EventRead(e.Name) {
				removed = true
				continue
			}
			out = append(out, e)
		}
		index := uint64(1) // never 0: a watch would loop
		if len(out) > 0 {
			index = eventIndex(out[len(out)-1].ID)
		}
		if q.minIndex == 0 || index != q.minIndex {
			s.answerEvents(w, r, out, index, removed)
			return
		}
		select {
		case <-changed:
		case <-timer:
			s.answerEvents(w, r, out, index, removed)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (s *Server) answerEvents(w http.ResponseWriter, r *http.Request, out []UserEvent, index uint64, removed bool) {
	w.Header().Set("X-Consul-Index", strconv.FormatUint(index, 10))
	if acl.RequestToken(r) != "" {
		w.Header().Set("X-Consul-Results-Filtered-By-ACLs", strconv.FormatBool(removed))
	}
	writeJSON(w, r, out)
}

// eventIndex is Consul's index for an event ID (its clients compute the
// same in Event().IDToIndex): the UUID's two 64-bit halves XORed. An ID that
// is not a UUID (a peer's, from the network) gets a hash instead.
func eventIndex(id string) uint64 {
	if len(id) == uuidLen && id[8] == '-' && id[13] == '-' && id[18] == '-' && id[23] == '-' {
		lo, err1 := strconv.ParseUint(id[0:8]+id[9:13]+id[14:18], 16, 64)
		hi, err2 := strconv.ParseUint(id[19:23]+id[24:36], 16, 64)
		if err1 == nil && err2 == nil {
			return lo ^ hi
		}
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return max(h.Sum64(), 1)
}
