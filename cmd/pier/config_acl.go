package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/pier-dev/pier/registry/api"
)

// aclFile is the config file's acl stanza, with Consul's key names; the
// rules of a token follow Consul's policy rules: maps of a name (service,
// key, node, agent) or a name prefix (service_prefix, key_prefix,
// node_prefix, agent_prefix) to read|write|deny, and operator, acl,
// keyring; or a string in Consul's rule language (HCL or JSON).
type aclFile struct {
	Enabled       *bool
	DefaultPolicy *string
	Tokens        *struct {
		InitialManagement *string
		Master            *string // Consul's name of initial_management before 1.11
		Agent             *string
		Default           *string
	}
	TokensList []struct {
		Secret      string
		AccessorID  string
		Description string
		Rules       api.ACLRules
	}

	// EnableTokenPersistence keeps tokens set by PUT /v1/agent/token/ in
	// the data dir's acl-tokens.json, as Consul.
	EnableTokenPersistence *bool
}

// mergeACL reads the acl stanza from the raw file: the prefix maps' keys are
// service names and KV paths, which key normalization would rewrite.
func (c *agentConfig) mergeACL(raw []byte) error {
	j, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return err
	}
	var top map[string]any
	if err := json.Unmarshal(j, &top); err != nil {
		return err
	}
	var stanza any
	for k, v := range top {
		if normKey(k) == "acl" {
			stanza = v
		}
	}
	if stanza == nil {
		return nil
	}
	j, err = json.Marshal(normalizeACL(stanza))
	if err != nil {
		return err
	}
	var af aclFile
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&af); err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return fmt.Errorf("acl: unknown key %s", msg)
		}
		return fmt.Errorf("acl: %w", err)
	}
	a := &c.ACL
	if af.Enabled != nil {
		a.Enabled = *af.Enabled
	}
	if af.DefaultPolicy != nil {
		a.DefaultPolicy = *af.DefaultPolicy
	}
	if af.EnableTokenPersistence != nil {
		c.ACLTokenPersistence = *af.EnableTokenPersistence
	}
	if t := af.Tokens; t != nil {
		if t.Master != nil {
			c.Warnings = append(c.Warnings, "acl.tokens.master is deprecated; use acl.tokens.initial_management")
			if t.InitialManagement == nil {
				t.InitialManagement = t.Master
			}
		}
		for _, s := range []struct{ dst, src *string }{
			{&a.InitialManagement, t.InitialManagement}, {&a.Agent, t.Agent}, {&a.Default, t.Default},
		} {
			if s.src != nil {
				*s.dst = *s.src
			}
		}
	}
	for _, t := range af.TokensList {
		a.Tokens = append(a.Tokens, api.ACLToken{Secret: t.Secret, AccessorID: t.AccessorID, Description: t.Description, Rules: t.Rules})
	}
	// Build it once here so a bad rule stops the agent with the file's name.
	if _, err := api.NewAuthorizer(*a); err != nil {
		return err
	}
	return nil
}

// ruleMaps are the exact-name rule maps of a token's rules.
var ruleMaps = map[string]bool{"service": true, "key": true, "node": true, "agent": true}

func normKey(k string) string {
	return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(k))
}

// normalizeACL drops underscores and dashes from keys, except inside the
// rule maps, whose keys are names.
func normalizeACL(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			nk := normKey(k)
			if strings.HasSuffix(nk, "prefix") || ruleMaps[nk] {
				out[nk] = val
				continue
			}
			out[nk] = normalizeACL(val)
		}
		return out
	case []any:
		for i := range t {
			t[i] = normalizeACL(t[i])
		}
		return t
	}
	return v
}
