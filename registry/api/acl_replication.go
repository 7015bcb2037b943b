package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
)

// ACL replication between datacenters is registry/acl's (replication.go);
// the API gives it its way to the primary datacenter (primaryLink: the
// requests go as a request with ?dc= would, over the WAN), runs it on the
// servers (RunACLReplication) and serves its status.

// primaryLink is acl.Primary through this Server.
type primaryLink struct{ s *Server }

// Forward serves r in dc: r gets ?dc=dc and goes as such a request goes.
func (p primaryLink) Forward(w http.ResponseWriter, r *http.Request, dc string) {
	q := r.URL.Query()
	q.Set("dc", dc)
	r.URL.RawQuery = q.Encode()
	r.RequestURI = r.URL.RequestURI()
	p.s.sendToDatacenter(w, r, dc)
}

// wanWatch is how often an open request to the primary looks whether the
// WAN pool still has a server of it: a request across a WAN cut ends once
// the pool sees the cut, not at its timeout.
const wanWatch = time.Second

// Get serves a GET of pathQuery in dc with token.
func (p primaryLink) Get(ctx context.Context, dc, pathQuery, token string) (int, []byte, error) {
	s := p.s
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if s.cfg.WAN != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			t := time.NewTicker(wanWatch)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-t.C:
					if len(s.cfg.WAN.ServerAddrs(dc)) == 0 {
						cancel(registry.ErrNoPath)
						return
					}
				}
			}
		}()
	}
	sep := "?"
	if strings.Contains(pathQuery, "?") {
		sep = "&"
	}
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, pathQuery+sep+"dc="+url.QueryEscape(dc), nil)
	r.RemoteAddr = "127.0.0.1:0"
	r.Header.Set("X-Consul-Token", token)
	r.Header.Set(acl.FromSecondaryHeader, s.reg.Config().Datacenter)
	rec := httptest.NewRecorder()
	s.sendToDatacenter(rec, r, dc)
	if err := context.Cause(ctx); err != nil {
		if errors.Is(err, registry.ErrNoPath) {
			return 0, nil, errors.New(`No path to datacenter "` + dc + `"`)
		}
		return 0, nil, err
	}
	return rec.Code, rec.Body.Bytes(), nil
}

// RunACLReplication replicates the primary datacenter's ACL objects while
// this server leads a secondary datacenter (registry/acl), until ctx
// ends; it returns at once on a client, in the primary, or with ACLs off.
func (s *Server) RunACLReplication(ctx context.Context) error {
	if s.acl == nil || s.cfg.Consensus == nil || s.cfg.Consensus.Node() == nil {
		return nil
	}
	return s.acl.RunReplication(ctx, s.cfg.Consensus.Node().IsLeader)
}

// aclReplicationStatus is GET /v1/acl/replication: the leader's status,
// as Consul's (no token needed: it tells nothing secret, and health checks
// read it).
func (s *Server) aclReplicationStatus(w http.ResponseWriter, r *http.Request) {
	if s.acl == nil {
		httpError(w, http.StatusUnauthorized, "ACL support disabled")
		return
	}
	if s.cfg.Consensus != nil {
		if _, _, ok := s.raftRead(w, r); !ok {
			return
		}
	}
	writeJSON(w, r, s.acl.ReplicationStatus())
}
