package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Reads that other parts of the agent (DNS, the front door, prepared
// queries) make of any datacenter go through this Server's own handler as
// a request with ?dc= would: the forwarding, the timeouts, the ACLs and
// the answers are the HTTP API's. Each reads with a token of the agent's,
// as Consul's: DNS with acl.tokens.dns, the front door with
// acl.tokens.agent, each else acl.tokens.default (Reader).

// Reader reads any datacenter through the Server with one token.
type Reader struct {
	s     *Server
	kind  string // the agent's token of this kind, looked up at each read
	token string // when kind is ""
}

// ReaderAs reads with the agent's token of kind ("dns", "agent" or
// "default"; acl.Authorizer.AgentSecret), looked up at each read so that
// PUT /v1/agent/token/ takes effect at once.
func (s *Server) ReaderAs(kind string) Reader { return Reader{s: s, kind: kind} }

func (rd Reader) secret() string {
	if rd.kind != "" {
		return rd.s.acl.AgentSecret(rd.kind)
	}
	return rd.token
}

// Instances answers every instance of service in dc ("" or this
// datacenter's name: the local catalog), with tag when given, and their
// checks, as /v1/health/service answers them.
func (rd Reader) Instances(ctx context.Context, dc, service, tag string) ([]registry.Instance, error) {
	v := url.Values{}
	if dc != "" {
		v.Set("dc", dc)
	}
	if tag != "" {
		v.Set("tag", tag)
	}
	var es []serviceEntry
	if err := rd.getJSON(ctx, "/v1/health/service/"+url.PathEscape(service)+"?"+v.Encode(), &es); err != nil {
		return nil, err
	}
	out := make([]registry.Instance, 0, len(es))
	for _, e := range es {
		out = append(out, e.instance())
	}
	return out, nil
}

// WatchInstances is Instances as a blocking query: it answers once dc's
// instances of service have an index past index (0: at once), or when
// wait has passed, with the index they have; what it reads and how it
// reaches dc are /v1/health/service's with ?index= and ?wait=.
func (rd Reader) WatchInstances(ctx context.Context, dc, service string, index uint64, wait time.Duration) ([]registry.Instance, uint64, error) {
	v := url.Values{}
	if dc != "" {
		v.Set("dc", dc)
	}
	if index > 0 {
		v.Set("index", strconv.FormatUint(index, 10))
		v.Set("wait", strconv.FormatInt(wait.Milliseconds(), 10)+"ms")
	}
	var es []serviceEntry
	h, err := rd.get(ctx, "/v1/health/service/"+url.PathEscape(service)+"?"+v.Encode(), nil, &es)
	if err != nil {
		return nil, 0, err
	}
	idx, err := strconv.ParseUint(h.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("api: the health of %s in %s: no X-Consul-Index", service, dc)
	}
	out := make([]registry.Instance, 0, len(es))
	for _, e := range es {
		out = append(out, e.instance())
	}
	return out, idx, nil
}

// Node answers dc's node called name; nil when it has none.
func (rd Reader) Node(ctx context.Context, dc, name string) (*registry.NodeEntry, error) {
	var ns *nodeServices
	if err := rd.getJSON(ctx, "/v1/catalog/node/"+url.PathEscape(name)+"?dc="+url.QueryEscape(dc), &ns); err != nil {
		return nil, err
	}
	if ns == nil {
		return nil, nil
	}
	n := ns.Node.entry()
	return &n, nil
}

// getJSON serves a GET of pathQuery with the reader's token and decodes
// its 200 answer into v.
func (rd Reader) getJSON(ctx context.Context, pathQuery string, v any) error {
	return rd.getJSONWith(ctx, pathQuery, nil, v)
}

// getJSONWith is getJSON with headers h added to the request.
func (rd Reader) getJSONWith(ctx context.Context, pathQuery string, h http.Header, v any) error {
	_, err := rd.get(ctx, pathQuery, h, v)
	return err
}

// get is getJSONWith that also answers the answer's headers.
func (rd Reader) get(ctx context.Context, pathQuery string, h http.Header, v any) (http.Header, error) {
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, pathQuery, nil)
	r.RemoteAddr = "127.0.0.1:0"
	for k, vs := range h {
		r.Header[k] = vs
	}
	if t := rd.secret(); t != "" {
		r.Header.Set("X-Consul-Token", t)
	}
	rec := httptest.NewRecorder()
	rd.s.serve(rec, r)
	if rec.Code == http.StatusInternalServerError && bytes.HasPrefix(rec.Body.Bytes(), []byte(registry.ErrNoPath.Error())) {
		return nil, fmt.Errorf("api: %s: %w", pathQuery, registry.ErrNoPath)
	}
	if rec.Code == http.StatusNotFound {
		return nil, fmt.Errorf("api: %s: %s: %w", pathQuery, bytes.TrimSpace(rec.Body.Bytes()), registry.ErrNotFound)
	}
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("api: %s: %d %s", pathQuery, rec.Code, rec.Body.Bytes())
	}
	return rec.Header(), json.Unmarshal(rec.Body.Bytes(), v)
}

// instance turns an answer of /v1/health/service back into the catalog's
// types.
func (e serviceEntry) instance() registry.Instance {
	n := e.Node.entry()
	in := registry.Instance{Node: &n, Service: &registry.ServiceEntry{Node: e.Node.Node, Service: registry.Service{
		ID: e.Service.ID, Name: e.Service.Service, Tags: e.Service.Tags, Address: e.Service.Address, Port: e.Service.Port,
		Meta: e.Service.Meta, Weights: registry.Weights(e.Service.Weights), TaggedAddresses: e.Service.TaggedAddresses,
		Ports: e.Service.Ports, Locality: e.Service.Locality,
	}, CreateIndex: e.Service.CreateIndex, ModifyIndex: e.Service.ModifyIndex}}
	for _, c := range e.Checks {
		in.Checks = append(in.Checks, &registry.CheckEntry{Node: c.Node, Check: registry.Check{
			CheckID: c.CheckID, Name: c.Name, Status: c.Status, Notes: c.Notes, Output: c.Output,
			ServiceID: c.ServiceID, ServiceName: c.ServiceName, ServiceTags: c.ServiceTags,
		}, CreateIndex: c.CreateIndex, ModifyIndex: c.ModifyIndex})
	}
	return in
}

func (n node) entry() registry.NodeEntry {
	return registry.NodeEntry{Node: registry.Node{ID: n.ID, Name: n.Node, Address: n.Address, Datacenter: n.Datacenter,
		TaggedAddresses: n.TaggedAddresses, Meta: n.Meta, Locality: n.Locality}, CreateIndex: n.CreateIndex, ModifyIndex: n.ModifyIndex}
}

// Datacenters answers every datacenter, this one first, then the others
// nearest first, as /v1/catalog/datacenters.
func (rd Reader) Datacenters(ctx context.Context) ([]string, error) {
	var dcs []string
	err := rd.getJSON(ctx, "/v1/catalog/datacenters", &dcs)
	return dcs, err
}
