package main

import (
	"time"

	"github.com/pier-dev/pier/registry"
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
		DNS               *string
		Replication       *string // the token a secondary datacenter's leader replicates with
	}
	TokensList []api.ACLToken

	// EnableTokenPersistence keeps tokens set by PUT /v1/agent/token/ in
	// the data dir's acl-tokens.json, as Consul.
	EnableTokenPersistence *bool
	// EnableTokenReplication: a secondary datacenter replicates global
	// tokens too (policies and roles always), as Consul.
	EnableTokenReplication *bool
	DownPolicy             *string        // a secondary's answer when the primary cannot be asked about a token
	TokenTTL               *time.Duration // how long the primary's answer about a token is kept
}

// mergeACL applies a config file's acl section.
func (c *agentConfig) mergeACL(raw []byte) error {
	if isNull(raw) {
		return nil
	}
	var af aclFile
	if err := registry.DecodeConfig("acl", raw, &af); err != nil {
		return err
	}
	a := &c.ACL
	if af.Enabled != nil {
		a.Enabled = *af.Enabled
	}
	if af.DefaultPolicy != nil {
		a.DefaultPolicy = *af.DefaultPolicy
	}
	fileSets(&a.DownPolicy, af.DownPolicy)
	fileSets(&a.TokenTTL, af.TokenTTL)
	if af.EnableTokenReplication != nil {
		a.TokenReplication = *af.EnableTokenReplication
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
			{&a.InitialManagement, t.InitialManagement}, {&a.Agent, t.Agent}, {&a.Default, t.Default}, {&a.DNS, t.DNS},
			{&a.Replication, t.Replication},
		} {
			if s.src != nil {
				*s.dst = *s.src
			}
		}
	}
	a.Tokens = append(a.Tokens, af.TokensList...)
	// Build it once here so a bad rule stops the agent with the file's name.
	if _, err := api.NewAuthorizer(*a); err != nil {
		return err
	}
	return nil
}
