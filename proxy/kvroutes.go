package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/pier-dev/pier/registry"
)

// KVRoutePrefix is where routes live in the KV store: one route per key, in
// the config file's shape (YAML or JSON), merged into every front door's
// table when it changes. Config routes win over KV routes for the same host
// and path, and KV routes over tag routes.
const KVRoutePrefix = "pier/routes/"

// ParseRoute reads one route from YAML or JSON (keys as in the config file:
// host, path, service, port, strip, prepend, max_fails, fail_timeout, tls,
// tls_skip_verify, tls_server_name, tls_ca_file) and validates it. tls:
// acme is the front door's certificate for the host, from
// proxy.tls.acme's CA (Route.ACME), not TLS to the instances.
func ParseRoute(b []byte) (Route, error) {
	var r Route
	j, m, err := kvMapping(b, "{path: /api/, service: api}")
	if err != nil {
		return r, err
	}
	for k, v := range m {
		if s, ok := v.(string); ok && strings.EqualFold(k, "tls") {
			if s != "acme" {
				return r, fmt.Errorf("tls %q: want true, false or acme", s)
			}
			r.ACME = true
			delete(m, k)
			if j, err = json.Marshal(m); err != nil {
				return r, err
			}
		}
	}
	acme := r.ACME
	if err := registry.DecodeConfig("", j, &r); err != nil {
		return Route{}, err
	}
	r.ACME = acme
	if r.ACME && r.Host == "" {
		return r, errors.New("tls: acme needs the route's host, the name the certificate is for")
	}
	return r, r.Validate()
}

// kvMapping reads a route stored in the KV store, YAML or JSON, as JSON and
// as the mapping it must be; example shows the shape in the error.
func kvMapping(b []byte, example string) ([]byte, map[string]any, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, nil, errors.New("empty route")
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, nil, fmt.Errorf("not YAML or JSON: %w", err)
	}
	var raw any
	if err := json.Unmarshal(j, &raw); err != nil {
		return nil, nil, err
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, nil, errors.New("expected a mapping such as " + example)
	}
	return j, m, nil
}
