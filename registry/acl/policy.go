package acl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/pier-dev/pier/registry"
)

// Policies: the rules of one token, compiled for lookups on the request
// path. Their sources are the configuration's tokens (authorizer.go) and the
// policies of the /v1/acl API (store.go), whose text ParseRules reads.

// Rules are Consul's policy rules. Each map goes from a name (exact
// rules) or a name prefix (the *Prefix maps) to "read", "write" or "deny":
// an exact rule beats every prefix, the longest matching prefix wins, ""
// matches everything, and write implies read. Operator, ACL and Keyring are
// one access level each; Keyring falls back to Operator when empty.
//
// In the configuration, rules are these maps or a string in Consul's rule
// language (ParseRules).
type Rules struct {
	ServicePrefix map[string]string
	Service       map[string]string
	KeyPrefix     map[string]string
	Key           map[string]string
	NodePrefix    map[string]string
	Node          map[string]string
	AgentPrefix   map[string]string
	Agent         map[string]string
	EventPrefix   map[string]string // user events (/v1/event) by name
	Event         map[string]string
	// Sessions by the name of the node they are made on; prepared
	// queries by their name (a template's: the name it starts).
	SessionPrefix map[string]string
	Session       map[string]string
	QueryPrefix   map[string]string
	Query         map[string]string
	Operator      string
	ACL           string
	Keyring       string
}

// UnmarshalJSON takes the maps, or a string of rules in Consul's language.
// The maps' keys are read as config files' keys are (registry.DecodeConfig):
// service_prefix or ServicePrefix, and the names inside as written.
func (r *Rules) UnmarshalJSON(b []byte) error {
	if s := bytes.TrimSpace(b); len(s) > 0 && s[0] == '"' {
		var src string
		if err := json.Unmarshal(s, &src); err != nil {
			return err
		}
		p, err := ParseRules(src)
		if err != nil {
			return err
		}
		*r = p
		return nil
	}
	type plain Rules
	return registry.DecodeConfig("", b, (*plain)(r))
}

// access is one level of a rule.
type access int

const (
	accessNone access = iota // no rule: the default policy applies
	accessDeny
	accessRead
	accessWrite
)

func parseAccess(s string) (access, error) {
	switch s {
	case "deny":
		return accessDeny, nil
	case "read":
		return accessRead, nil
	case "write":
		return accessWrite, nil
	case "list":
		return accessNone, fmt.Errorf("%q is not supported by pier (use read)", s)
	}
	return accessNone, fmt.Errorf("%q is not one of read, write, deny", s)
}

// stronger merges the rules of two policies for the same name, as Consul
// does: deny beats write, write beats read.
func stronger(a, b access) access {
	if a == accessDeny || b == accessDeny {
		return accessDeny
	}
	return max(a, b)
}

// resourceRules is one resource's table.
type resourceRules struct {
	exact  map[string]access
	prefix map[string]access
}

func parseNames(kind string, m map[string]string) (map[string]access, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make(map[string]access, len(m))
	for p, v := range m {
		a, err := parseAccess(v)
		if err != nil {
			return nil, fmt.Errorf("%s %q: policy %w", kind, p, err)
		}
		out[p] = a
	}
	return out, nil
}

func (rr *resourceRules) parse(kind string, exact, prefix map[string]string) error {
	var err error
	if rr.exact, err = parseNames(kind, exact); err != nil {
		return err
	}
	rr.prefix, err = parseNames(kind+"_prefix", prefix)
	return err
}

// lookup answers the rule for name: an exact one, else the longest prefix.
func (rr *resourceRules) lookup(name string) access {
	if a, ok := rr.exact[name]; ok {
		return a
	}
	best, got := -1, accessNone
	for pre, a := range rr.prefix {
		if len(pre) > best && strings.HasPrefix(name, pre) {
			best, got = len(pre), a
		}
	}
	return got
}

func mergeNames(dst *map[string]access, src map[string]access) {
	for k, a := range src {
		if *dst == nil {
			*dst = map[string]access{}
		}
		(*dst)[k] = stronger((*dst)[k], a)
	}
}

// ruleSet is one policy's compiled rules.
type ruleSet struct {
	service, key, node, agent resourceRules
	event, session, query     resourceRules
	operator, acl, keyring    access
}

// compileRules validates r; every error names the rule.
func compileRules(r Rules) (*ruleSet, error) {
	rs := &ruleSet{}
	for _, x := range []struct {
		kind          string
		dst           *resourceRules
		exact, prefix map[string]string
	}{
		{"service", &rs.service, r.Service, r.ServicePrefix},
		{"key", &rs.key, r.Key, r.KeyPrefix},
		{"node", &rs.node, r.Node, r.NodePrefix},
		{"agent", &rs.agent, r.Agent, r.AgentPrefix},
		{"event", &rs.event, r.Event, r.EventPrefix},
		{"session", &rs.session, r.Session, r.SessionPrefix},
		{"query", &rs.query, r.Query, r.QueryPrefix},
	} {
		if err := x.dst.parse(x.kind, x.exact, x.prefix); err != nil {
			return nil, err
		}
	}
	for _, x := range []struct {
		kind string
		dst  *access
		v    string
	}{{"operator", &rs.operator, r.Operator}, {"acl", &rs.acl, r.ACL}, {"keyring", &rs.keyring, r.Keyring}} {
		if x.v == "" {
			continue
		}
		a, err := parseAccess(x.v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", x.kind, err)
		}
		*x.dst = a
	}
	return rs, nil
}

// merge adds another policy's rules.
func (rs *ruleSet) merge(o *ruleSet) {
	for _, x := range []struct{ dst, src *resourceRules }{
		{&rs.service, &o.service}, {&rs.key, &o.key}, {&rs.node, &o.node}, {&rs.agent, &o.agent},
		{&rs.event, &o.event}, {&rs.session, &o.session}, {&rs.query, &o.query},
	} {
		mergeNames(&x.dst.exact, x.src.exact)
		mergeNames(&x.dst.prefix, x.src.prefix)
	}
	rs.operator = stronger(rs.operator, o.operator)
	rs.acl = stronger(rs.acl, o.acl)
	rs.keyring = stronger(rs.keyring, o.keyring)
}

// Policy is what one token may do. The zero Policy with allow=false denies
// everything. Policies are immutable once built.
type Policy struct {
	management bool
	allow      bool // the default policy, for resources without a rule
	rules      ruleSet
	// accessor is the token's AccessorID, which a denial names, as
	// Consul's; "" when unknown (a down_policy's stand-in).
	accessor string
}

// withAccessor is a copy of p that names accessor.
func (p *Policy) withAccessor(accessor string) *Policy {
	c := *p
	c.accessor = accessor
	return &c
}

func (p *Policy) can(rules *resourceRules, name string, write bool) bool {
	if p.management {
		return true
	}
	return p.level(rules.lookup(name), write)
}

func (p *Policy) level(a access, write bool) bool {
	if p.management {
		return true
	}
	switch a {
	case accessWrite:
		return true
	case accessRead:
		return !write
	case accessDeny:
		return false
	}
	return p.allow
}

// ServiceRead and the other checks report whether the token may read or
// write the named resource.
func (p *Policy) ServiceRead(name string) bool  { return p.can(&p.rules.service, name, false) }
func (p *Policy) ServiceWrite(name string) bool { return p.can(&p.rules.service, name, true) }
func (p *Policy) KeyRead(key string) bool       { return p.can(&p.rules.key, key, false) }
func (p *Policy) KeyWrite(key string) bool      { return p.can(&p.rules.key, key, true) }
func (p *Policy) NodeRead(name string) bool     { return p.can(&p.rules.node, name, false) }
func (p *Policy) NodeWrite(name string) bool    { return p.can(&p.rules.node, name, true) }
func (p *Policy) AgentRead(name string) bool    { return p.can(&p.rules.agent, name, false) }
func (p *Policy) AgentWrite(name string) bool   { return p.can(&p.rules.agent, name, true) }
func (p *Policy) EventRead(name string) bool    { return p.can(&p.rules.event, name, false) }
func (p *Policy) EventWrite(name string) bool   { return p.can(&p.rules.event, name, true) }
func (p *Policy) SessionRead(node string) bool  { return p.can(&p.rules.session, node, false) }
func (p *Policy) SessionWrite(node string) bool { return p.can(&p.rules.session, node, true) }
func (p *Policy) QueryRead(name string) bool    { return p.can(&p.rules.query, name, false) }
func (p *Policy) QueryWrite(name string) bool   { return p.can(&p.rules.query, name, true) }
func (p *Policy) OperatorRead() bool            { return p.level(p.rules.operator, false) }
func (p *Policy) OperatorWrite() bool           { return p.level(p.rules.operator, true) }

// ACLRead and ACLWrite need an acl rule (or management): as in Consul, the
// default policy "allow" does not open the ACL endpoints, or every
// anonymous request could mint itself a management token. acl = "write"
// can do as much anyway (link a token to global-management), as in Consul.
func (p *Policy) ACLRead() bool  { return p.management || p.rules.acl >= accessRead }
func (p *Policy) ACLWrite() bool { return p.management || p.rules.acl == accessWrite }

// KeyringRead and KeyringWrite use the keyring rule, or operator without one.
func (p *Policy) KeyringRead() bool  { return p.level(p.keyring(), false) }
func (p *Policy) KeyringWrite() bool { return p.level(p.keyring(), true) }

func (p *Policy) keyring() access {
	if p.rules.keyring != accessNone {
		return p.rules.keyring
	}
	return p.rules.operator
}

// Management reports whether the token may do everything.
func (p *Policy) Management() bool { return p.management }
