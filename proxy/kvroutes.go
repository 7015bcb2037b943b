package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pier-dev/pier/registry"
)

// KVRoutePrefix is where routes live in the KV store: one route per key, in
// the config file's shape (YAML or JSON), merged into every front door's
// table when it changes. Config routes win over KV routes for the same host
// and path, and KV routes over tag routes.
const KVRoutePrefix = "pier/routes/"

// routeFile is a route as the config file and the KV store write it.
type routeFile struct {
	Host        string
	Path        string
	Service     string
	Port        string // a named port of the service
	Strip       string
	Prepend     string
	MaxFails    *int
	FailTimeout string

	TLS           bool
	TLSSkipVerify bool
	TLSServerName string
	TLSCAFile     string // a path on the agent that serves the route
}

// ParseRoute reads one route from YAML or JSON (keys as in the config file:
// host, path, service, port, strip, prepend, max_fails, fail_timeout, tls,
// tls_skip_verify, tls_server_name, tls_ca_file) and validates it.
func ParseRoute(b []byte) (Route, error) {
	var r Route
	if len(bytes.TrimSpace(b)) == 0 {
		return r, errors.New("empty route")
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return r, fmt.Errorf("not YAML or JSON: %w", err)
	}
	var raw any
	if err := json.Unmarshal(j, &raw); err != nil {
		return r, err
	}
	if _, ok := raw.(map[string]any); !ok {
		return r, errors.New("expected a mapping such as {path: /api/, service: api}")
	}
	j, _ = json.Marshal(registry.NormalizeKeys(raw))
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	var f routeFile
	if err := dec.Decode(&f); err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return r, fmt.Errorf("unknown key %s", msg)
		}
		return r, err
	}
	r = Route{Host: f.Host, Path: f.Path, Service: f.Service, Port: f.Port, Strip: f.Strip, Prepend: f.Prepend, MaxFails: f.MaxFails,
		TLS: f.TLS, TLSSkipVerify: f.TLSSkipVerify, TLSServerName: f.TLSServerName, TLSCAFile: f.TLSCAFile}
	if f.FailTimeout != "" {
		d, err := time.ParseDuration(f.FailTimeout)
		if err != nil || d < 0 {
			return r, fmt.Errorf("fail_timeout: invalid duration %q", f.FailTimeout)
		}
		r.FailTimeout = d
	}
	return r, r.Validate()
}
