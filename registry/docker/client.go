package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// errGone is what the engine says of a container that no longer exists.
var errGone = errors.New("no such container")

// engine is a minimal client of the Docker Engine API: the four read-only
// calls the watcher needs, on unversioned paths so that any engine version
// answers in its own current API version.
type engine struct {
	hc      *http.Client
	base    string        // http://docker for a unix socket, http://host:port for tcp
	timeout time.Duration // per request, except the event stream
}

// newEngine parses a Docker endpoint: unix:///path, tcp://host:port or
// http://host:port. TLS (DOCKER_TLS_VERIFY) is not supported.
func newEngine(endpoint string, timeout time.Duration) (*engine, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("docker: endpoint %q: %w", endpoint, err)
	}
	tr := &http.Transport{MaxIdleConns: 4, IdleConnTimeout: time.Minute, DisableCompression: true}
	e := &engine{hc: &http.Client{Transport: tr}, timeout: timeout}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if path == "" {
			return nil, fmt.Errorf("docker: endpoint %q: no socket path", endpoint)
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		e.base = "http://docker"
	case "tcp", "http":
		if u.Host == "" {
			return nil, fmt.Errorf("docker: endpoint %q: no host", endpoint)
		}
		e.base = "http://" + u.Host
	default:
		return nil, fmt.Errorf("docker: endpoint %q: want unix:///path, tcp://host:port or http://host:port", endpoint)
	}
	return e, nil
}

func (e *engine) do(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusNotFound {
		resp.Body.Close()
		return nil, errGone
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// get decodes the JSON answer of path into v.
func (e *engine) get(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	resp, err := e.do(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 32<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// ping checks that an engine answers.
func (e *engine) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	resp, err := e.do(ctx, "/_ping")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// running returns the IDs of the running containers.
func (e *engine) running(ctx context.Context) ([]string, error) {
	var list []struct{ ID string }
	if err := e.get(ctx, "/containers/json", &list); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(list))
	for _, c := range list {
		if c.ID != "" {
			ids = append(ids, c.ID)
		}
	}
	return ids, nil
}

// inspect returns one container; errGone if it no longer exists.
func (e *engine) inspect(ctx context.Context, id string) (*container, error) {
	var c container
	if err := e.get(ctx, "/containers/"+url.PathEscape(id)+"/json", &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// watchedActions are the container events the watcher acts on.
var watchedActions = []string{"start", "restart", "unpause", "rename", "kill", "die", "stop", "pause", "destroy"}

// events opens the engine's event stream of container events; the caller
// reads it with decodeEvents and closes it (or cancels ctx).
func (e *engine) events(ctx context.Context) (io.ReadCloser, error) {
	f, _ := json.Marshal(map[string][]string{"type": {"container"}, "event": watchedActions})
	resp, err := e.do(ctx, "/events?filters="+url.QueryEscape(string(f)))
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
