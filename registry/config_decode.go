package registry

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// DecodeConfig decodes data, one section of a config file as JSON (YAML is
// converted before), into v, a package's own Config or the part of it the
// file may set; section is the section's key, for errors.
//
// Every part of pier reads its section this one way, so that a key is
// spelled as Consul spells it whatever the section: names match struct
// fields' json names ignoring case, '_' and '-' (snake_case, CamelCase and
// kebab-case meet), the keys of maps (node_meta, Meta, service_ttl, ACL
// rule maps) are kept byte for byte, and an unknown key is an error that
// names it. A time.Duration takes a Go duration such as "10s" and is never
// negative. Fields the section does not name keep their values, so v can
// hold the defaults or an earlier file's values; a slice is replaced.
func DecodeConfig(section string, data []byte, v any) error {
	return configError(section, json.Unmarshal(data, v, configOptions()))
}

// configOptions are built per call: the decoder keeps no package state.
func configOptions() json.Options {
	return json.JoinOptions(
		json.MatchCaseInsensitiveNames(true), // also ignores '_' and '-'
		json.RejectUnknownMembers(true),
		jsontext.AllowInvalidUTF8(true), // as encoding/json, which read these files before
		json.WithUnmarshalers(json.JoinUnmarshalers(
			json.UnmarshalFromFunc(unmarshalDuration),
			json.UnmarshalFromFunc(unmarshalPrefix),
		)),
	)
}

// unmarshalDuration reads Consul's durations: strings such as "10s". A
// null or "" leaves the value as it was, as an absent key does (routes in
// the KV store were written with fail_timeout: "" when read this way).
func unmarshalDuration(dec *jsontext.Decoder, d *time.Duration) error {
	val, err := dec.ReadValue()
	if err != nil {
		return err
	}
	switch val.Kind() {
	case 'n':
		return nil
	case '"':
	default:
		return fmt.Errorf("%s is not a duration such as \"10s\"", val)
	}
	var s string
	if err := json.Unmarshal(val, &s); err != nil {
		return err
	}
	if s == "" {
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("invalid duration %q (want one such as \"10s\")", s)
	}
	*d = v
	return nil
}

// unmarshalPrefix reads an address or a CIDR: an address alone is itself
// (a /32 or /128), as in Consul's ACL-like allow lists.
func unmarshalPrefix(dec *jsontext.Decoder, p *netip.Prefix) error {
	val, err := dec.ReadValue()
	if err != nil {
		return err
	}
	var s string
	if val.Kind() != '"' || json.Unmarshal(val, &s) != nil {
		return fmt.Errorf("%s: want an address or a CIDR such as 10.0.0.0/8", val)
	}
	v, err := ParsePrefix(s)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ParsePrefix reads an address or a CIDR such as 10.0.0.0/8; an address
// alone is a prefix of its full length.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		ip, err2 := netip.ParseAddr(s)
		if err2 != nil {
			return p, fmt.Errorf("%q: want an address or a CIDR such as 10.0.0.0/8", s)
		}
		p = netip.PrefixFrom(ip, ip.BitLen())
	}
	return p.Masked(), nil
}

// configError turns the decoder's error into one line that names the key
// as a dotted path under section, such as proxy.routes[0].fail_timeout.
func configError(section string, err error) error {
	if err == nil {
		return nil
	}
	var se *json.SemanticError
	if errors.As(err, &se) {
		key := configKey(section, se.JSONPointer)
		switch {
		case errors.Is(se.Err, json.ErrUnknownName):
			return fmt.Errorf("unknown key %q", key)
		case se.Err != nil:
			return fmt.Errorf("%s: %v", key, se.Err)
		case se.GoType != nil:
			return fmt.Errorf("%s: want %s, got %s", key, kindName(se.GoType.Kind().String()), jsonKindName(se.JSONKind))
		}
		return fmt.Errorf("%s: %v", key, err)
	}
	var syn *jsontext.SyntacticError
	if errors.As(err, &syn) {
		key := configKey(section, syn.JSONPointer)
		if errors.Is(syn.Err, jsontext.ErrDuplicateName) {
			return fmt.Errorf("%s: given twice (keys match ignoring case, '_' and '-')", key)
		}
		return fmt.Errorf("%s: %v", key, syn.Err)
	}
	return fmt.Errorf("%s: %w", section, err)
}

// configKey writes a JSON pointer as the dotted path people write.
func configKey(section string, p jsontext.Pointer) string {
	var b strings.Builder
	b.WriteString(section)
	for tok := range p.Tokens() {
		if tok != "" && strings.Trim(tok, "0123456789") == "" {
			b.WriteString("[" + tok + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}

func kindName(k string) string {
	switch {
	case strings.HasPrefix(k, "int"), strings.HasPrefix(k, "uint"):
		return "an integer"
	case strings.HasPrefix(k, "float"):
		return "a number"
	case k == "bool":
		return "true or false"
	case k == "string":
		return "a string"
	case k == "slice", k == "array":
		return "a list"
	case k == "map", k == "struct", k == "ptr":
		return "a mapping"
	}
	return k
}

func jsonKindName(k jsontext.Kind) string {
	switch k {
	case 'n':
		return "null"
	case 'f', 't':
		return "a boolean"
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '{':
		return "a mapping"
	case '[':
		return "a list"
	}
	return "something else"
}
