package acl

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ParseRules reads a policy's rules in Consul's rule language, as HCL or as
// its JSON form (a text starting with "{"):
//
//	service_prefix "web" { policy = "write" }
//	service "db" { policy = "read" }
//	key_prefix "app/" { policy = "write" }
//	node_prefix "" { policy = "read" }
//	agent "node1" { policy = "read" }
//	event_prefix "deploy-" { policy = "write" }
//	session_prefix "" { policy = "write" }
//	query_prefix "web" { policy = "write" }
//	operator = "read"
//	acl = "write"
//
// The grammar is hand-written rather than hashicorp/hcl: Consul's rules use
// one block shape and a few attributes, and a small parser is easy to fuzz
// and gives errors that name the rule and the line. Rules for what pier does
// not have (mesh, peering, a service's intentions) are accepted and have no effect, so Consul's policies can be pasted;
// anything else is an error.
func ParseRules(src string) (Rules, error) {
	var r Rules
	var err error
	if t := strings.TrimSpace(src); strings.HasPrefix(t, "{") {
		err = parseRulesJSON(t, &r)
	} else {
		p := &ruleParser{src: src, line: 1}
		err = p.parse(&r)
	}
	if err != nil {
		return Rules{}, err
	}
	if _, err := compileRules(r); err != nil {
		return Rules{}, err
	}
	return r, nil
}

// ruleBlocks are the block rules: each maps onto a map of Rules.
var ruleBlocks = map[string]func(*Rules) *map[string]string{
	"service_prefix": func(r *Rules) *map[string]string { return &r.ServicePrefix },
	"service":        func(r *Rules) *map[string]string { return &r.Service },
	"key_prefix":     func(r *Rules) *map[string]string { return &r.KeyPrefix },
	"key":            func(r *Rules) *map[string]string { return &r.Key },
	"node_prefix":    func(r *Rules) *map[string]string { return &r.NodePrefix },
	"node":           func(r *Rules) *map[string]string { return &r.Node },
	"agent_prefix":   func(r *Rules) *map[string]string { return &r.AgentPrefix },
	"agent":          func(r *Rules) *map[string]string { return &r.Agent },
	"event_prefix":   func(r *Rules) *map[string]string { return &r.EventPrefix },
	"event":          func(r *Rules) *map[string]string { return &r.Event },
	"session_prefix": func(r *Rules) *map[string]string { return &r.SessionPrefix },
	"session":        func(r *Rules) *map[string]string { return &r.Session },
	"query_prefix":   func(r *Rules) *map[string]string { return &r.QueryPrefix },
	"query":          func(r *Rules) *map[string]string { return &r.Query },
}

// ignoredAttrs are Consul rules for features pier lacks.
var ignoredAttrs = map[string]bool{"mesh": true, "peering": true}

// ruleAttrs are the top-level attributes.
var ruleAttrs = map[string]func(*Rules) *string{
	"operator": func(r *Rules) *string { return &r.Operator },
	"acl":      func(r *Rules) *string { return &r.ACL },
	"keyring":  func(r *Rules) *string { return &r.Keyring },
}

// addBlock records kind "name" { policy = v }.
func addBlock(r *Rules, kind, name, policy string) error {
	if policy == "" {
		return fmt.Errorf("%s %q: policy is missing", kind, name)
	}
	// A name that is not UTF-8 could never match (service names and keys
	// arrive through JSON, which has no other kind), and it would not
	// survive being stored as JSON: refuse it rather than change it.
	if !utf8.ValidString(name) {
		return fmt.Errorf("%s %q: the name is not valid UTF-8", kind, name)
	}
	f, ok := ruleBlocks[kind]
	if !ok {
		return fmt.Errorf("unknown rule %q", kind)
	}
	m := f(r)
	if *m == nil {
		*m = map[string]string{}
	}
	if _, dup := (*m)[name]; dup {
		return fmt.Errorf("%s %q is defined twice", kind, name)
	}
	(*m)[name] = policy
	return nil
}

// addAttr records name = v at the top level.
func addAttr(r *Rules, name, v string) error {
	if ignoredAttrs[name] {
		if _, err := parseAccess(v); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	f, ok := ruleAttrs[name]
	if !ok {
		if _, block := ruleBlocks[name]; block {
			return fmt.Errorf("%s needs a name and a block: %s \"name\" { policy = \"read\" }", name, name)
		}
		return fmt.Errorf("unknown rule %q", name)
	}
	if *f(r) != "" {
		return fmt.Errorf("%s is defined twice", name)
	}
	if v == "" {
		return fmt.Errorf("%s: empty value", name)
	}
	*f(r) = v
	return nil
}

// blockKey checks a key inside a rule's block.
func blockKey(kind, name, key string) error {
	switch {
	case key == "policy":
		return nil
	case key == "intentions" && (kind == "service" || kind == "service_prefix"):
		return nil
	}
	return fmt.Errorf("%s %q: unknown key %q (want policy)", kind, name, key)
}

// ruleParser reads the HCL form.
type ruleParser struct {
	src  string
	pos  int
	line int
}

type ruleTok struct {
	kind byte // 'i' identifier, 's' string, or the punctuation itself; 0 at the end
	text string
	line int
}

func (p *ruleParser) errf(line int, format string, args ...any) error {
	return fmt.Errorf("line %d: %s", line, fmt.Sprintf(format, args...))
}

// next returns the next token, skipping blanks, commas and comments.
func (p *ruleParser) next() (ruleTok, error) {
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		switch {
		case c == '\n':
			p.line++
			p.pos++
		case c == ' ' || c == '\t' || c == '\r' || c == ',' || c == ';':
			p.pos++
		case c == '#' || c == '/' && strings.HasPrefix(p.src[p.pos:], "//"):
			for p.pos < len(p.src) && p.src[p.pos] != '\n' {
				p.pos++
			}
		case c == '/' && strings.HasPrefix(p.src[p.pos:], "/*"):
			end := strings.Index(p.src[p.pos+2:], "*/")
			if end < 0 {
				return ruleTok{}, p.errf(p.line, "unterminated comment")
			}
			p.line += strings.Count(p.src[p.pos:p.pos+2+end], "\n")
			p.pos += end + 4
		case c == '{' || c == '}' || c == '=':
			p.pos++
			return ruleTok{kind: c, text: string(c), line: p.line}, nil
		case c == '"':
			return p.str()
		case isIdentByte(c, true):
			start := p.pos
			for p.pos < len(p.src) && isIdentByte(p.src[p.pos], false) {
				p.pos++
			}
			return ruleTok{kind: 'i', text: p.src[start:p.pos], line: p.line}, nil
		default:
			return ruleTok{}, p.errf(p.line, "unexpected %q", c)
		}
	}
	return ruleTok{line: p.line}, nil
}

func isIdentByte(c byte, first bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && (c >= '0' && c <= '9' || c == '-')
}

// str reads a quoted string with Go's escapes (HCL's are a subset).
func (p *ruleParser) str() (ruleTok, error) {
	start := p.pos
	for i := p.pos + 1; i < len(p.src); i++ {
		switch p.src[i] {
		case '\\':
			i++
		case '\n':
			return ruleTok{}, p.errf(p.line, "unterminated string")
		case '"':
			s, err := strconv.Unquote(p.src[start : i+1])
			if err != nil {
				return ruleTok{}, p.errf(p.line, "bad string %s", p.src[start:i+1])
			}
			p.pos = i + 1
			return ruleTok{kind: 's', text: s, line: p.line}, nil
		}
	}
	return ruleTok{}, p.errf(p.line, "unterminated string")
}

func (p *ruleParser) expect(kind byte, what string) (ruleTok, error) {
	t, err := p.next()
	if err != nil {
		return t, err
	}
	if t.kind != kind {
		return t, p.errf(t.line, "want %s, got %s", what, describe(t))
	}
	return t, nil
}

func describe(t ruleTok) string {
	switch t.kind {
	case 0:
		return "the end"
	case 's':
		return strconv.Quote(t.text)
	}
	return t.text
}

func (p *ruleParser) parse(r *Rules) error {
	for {
		t, err := p.next()
		if err != nil {
			return err
		}
		if t.kind == 0 {
			return nil
		}
		if t.kind != 'i' {
			return p.errf(t.line, "want a rule name, got %s", describe(t))
		}
		n, err := p.next()
		if err != nil {
			return err
		}
		switch n.kind {
		case '=':
			v, err := p.expect('s', "a quoted value")
			if err != nil {
				return err
			}
			if err := addAttr(r, t.text, v.text); err != nil {
				return p.errf(t.line, "%v", err)
			}
		case 's':
			if _, err := p.expect('{', "{"); err != nil {
				return err
			}
			policy, err := p.block(t.text, n.text)
			if err != nil {
				return err
			}
			if err := addBlock(r, t.text, n.text, policy); err != nil {
				return p.errf(t.line, "%v", err)
			}
		default:
			return p.errf(n.line, "%s: want = or a quoted name, got %s", t.text, describe(n))
		}
	}
}

// block reads the inside of kind "name" { ... } up to its }.
func (p *ruleParser) block(kind, name string) (string, error) {
	var policy string
	for {
		k, err := p.next()
		if err != nil {
			return "", err
		}
		switch k.kind {
		case '}':
			return policy, nil
		case 'i':
		default:
			return "", p.errf(k.line, "%s %q: want a key or }, got %s", kind, name, describe(k))
		}
		if err := blockKey(kind, name, k.text); err != nil {
			return "", p.errf(k.line, "%v", err)
		}
		if _, err := p.expect('=', "="); err != nil {
			return "", err
		}
		v, err := p.expect('s', "a quoted value")
		if err != nil {
			return "", err
		}
		if k.text == "policy" {
			if policy != "" {
				return "", p.errf(k.line, "%s %q: policy is defined twice", kind, name)
			}
			policy = v.text
		}
	}
}

// parseRulesJSON reads the JSON form: {"service_prefix": {"web": {"policy":
// "write"}}, "operator": "read"}; a block kind may also hold a list of such
// objects, as HCL's JSON encoder writes them.
func parseRulesJSON(src string, r *Rules) error {
	var top map[string]json.RawMessage
	if err := json.Unmarshal([]byte(src), &top); err != nil {
		return fmt.Errorf("rules are not valid JSON: %w", err)
	}
	for _, kind := range sortedKeys(top) {
		raw := top[kind]
		_, block := ruleBlocks[kind]
		if block {
			var objs []map[string]map[string]json.RawMessage
			var one map[string]map[string]json.RawMessage
			if json.Unmarshal(raw, &one) == nil {
				objs = append(objs, one)
			} else if err := json.Unmarshal(raw, &objs); err != nil {
				return fmt.Errorf("%s: want an object of names to {\"policy\": ...}", kind)
			}
			for _, o := range objs {
				for _, name := range sortedKeys(o) {
					var policy string
					for _, k := range sortedKeys(o[name]) {
						if err := blockKey(kind, name, k); err != nil {
							return err
						}
						var v string
						if err := json.Unmarshal(o[name][k], &v); err != nil {
							return fmt.Errorf("%s %q: %s is not a string", kind, name, k)
						}
						if k == "policy" {
							policy = v
						}
					}
					if err := addBlock(r, kind, name, policy); err != nil {
						return err
					}
				}
			}
			continue
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			if _, known := ruleAttrs[kind]; known || ignoredAttrs[kind] {
				return fmt.Errorf("%s: want a string", kind)
			}
			return fmt.Errorf("unknown rule %q", kind)
		}
		if err := addAttr(r, kind, v); err != nil {
			return err
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
