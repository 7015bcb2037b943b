package api

import (
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"sync"

	"github.com/hashicorp/hil"
	"github.com/hashicorp/hil/ast"
)

// Prepared-query templates, as Consul's name_prefix_match: a template
// answers every name that starts with its own (the longest such name
// wins; a query whose name is the whole name asked wins over any
// template), and each string of its Service part is an interpolation in
// HashiCorp's HIL (the language Consul uses there), evaluated against the
// name asked: ${name.full}, ${name.prefix}, ${name.suffix},
// ${match(N)} (the Nth group of Template.Regexp, "" past the last) and
// ${agent.segment} (pier has no segments: ""). Only Service is rendered,
// as in Consul; DNS, Session and Token are the template's own.

// templateNamePrefixMatch is the one template type Consul knows.
const templateNamePrefixMatch = "name_prefix_match"

// compiledTemplate is a template parsed once: each string field of its
// Service by path (Consul's paths, as in "Service.Tags[1]"), and its
// regexp.
type compiledTemplate struct {
	q     preparedQuery
	trees map[string]ast.Node
	re    *regexp.Regexp
	// mu serializes renders: HIL's type check rewrites a tree in place
	// (implicit conversions) as it evaluates it.
	mu sync.Mutex
}

// compileTemplate checks q's template as Consul does when it is stored:
// the type, every string of Service as HIL, the regexp, and a render with
// the template's own name (the shortest name it will ever be asked for).
// Errors read as Consul's.
func compileTemplate(q preparedQuery) (*compiledTemplate, error) {
	if q.Template.Type != templateNamePrefixMatch {
		return nil, fmt.Errorf("Bad Template.Type '%s'", q.Template.Type)
	}
	ct := &compiledTemplate{q: q, trees: map[string]ast.Node{}}
	err := walkStrings(&ct.q.Service, func(path string, s string) (string, error) {
		tree, err := hil.Parse(s)
		if err != nil {
			return s, fmt.Errorf("Bad format '%s' in Service%s: %s", s, path, err)
		}
		ct.trees[path] = tree
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	if q.Template.Regexp != "" {
		if ct.re, err = regexp.Compile(q.Template.Regexp); err != nil {
			return nil, fmt.Errorf("Bad Regexp: %s", err)
		}
	}
	if _, err := ct.render(q.Name, ""); err != nil {
		return nil, err
	}
	return ct, nil
}

// render answers the query the template makes of name, asked by an agent
// of segment.
func (ct *compiledTemplate) render(name, segment string) (preparedQuery, error) {
	q := ct.q
	q.Service = cloneService(ct.q.Service)
	var groups []string
	if ct.re != nil {
		groups = ct.re.FindStringSubmatch(name)
	}
	str := func(v string) ast.Variable { return ast.Variable{Type: ast.TypeString, Value: v} }
	cfg := &hil.EvalConfig{GlobalScope: &ast.BasicScope{
		VarMap: map[string]ast.Variable{
			"name.full":     str(name),
			"name.prefix":   str(ct.q.Name),
			"name.suffix":   str(strings.TrimPrefix(name, ct.q.Name)),
			"agent.segment": str(segment),
		},
		FuncMap: map[string]ast.Function{"match": {
			ArgTypes:   []ast.Type{ast.TypeInt},
			ReturnType: ast.TypeString,
			// Never fails at run time: a group that is not there is "".
			Callback: func(in []any) (any, error) {
				if i, ok := in[0].(int); ok && i >= 0 && i < len(groups) {
					return groups[i], nil
				}
				return "", nil
			},
		}},
	}}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	err := walkStrings(&q.Service, func(path string, s string) (string, error) {
		tree, ok := ct.trees[path]
		if !ok {
			return s, nil
		}
		res, err := hil.Eval(tree, cfg)
		if err != nil {
			return s, fmt.Errorf("Bad evaluation for '%s' in Service%s: %s", s, path, err)
		}
		if res.Type != hil.TypeString {
			return s, fmt.Errorf("Expected Service%s field to be a string, got %s", path, res.Type)
		}
		return res.Value.(string), nil
	})
	if err != nil {
		return q, err
	}
	if ct.q.Template.RemoveEmptyTags {
		tags := make([]string, 0, len(q.Service.Tags))
		for _, t := range q.Service.Tags {
			if t != "" {
				tags = append(tags, t)
			}
		}
		q.Service.Tags = tags
	}
	return q, nil
}

// cloneService is a copy of s that shares no slice or map with it.
func cloneService(s queryService) queryService {
	var c queryService
	b, _ := json.Marshal(s)
	_ = json.Unmarshal(b, &c)
	return c
}

// walkStrings calls fn with every string of v (a pointer to a struct),
// its path and its value, and stores what fn answers in its place: in
// struct fields, slices and map values, depth first, as Consul's walk.
func walkStrings(v any, fn func(path, s string) (string, error)) error {
	return visitStrings("", reflect.ValueOf(v).Elem(), fn)
}

func visitStrings(path string, v reflect.Value, fn func(path, s string) (string, error)) error {
	switch v.Kind() {
	case reflect.String:
		s, err := fn(path, v.String())
		if err == nil {
			v.SetString(s)
		}
		return err
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < v.NumField(); i++ {
			p := path
			if !t.Field(i).Anonymous {
				p += "." + t.Field(i).Name
			}
			if err := visitStrings(p, v.Field(i), fn); err != nil {
				return err
			}
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			if err := visitStrings(fmt.Sprintf("%s[%d]", path, i), v.Index(i), fn); err != nil {
				return err
			}
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			if err := visitStrings(fmt.Sprintf("%s[%s]", path, k.String()), e, fn); err != nil {
				return err
			}
			v.SetMapIndex(k, e)
		}
	}
	return nil
}

// templateCache keeps each template compiled, by ID, while its
// ModifyIndex stays the same.
type templateCache struct {
	mu sync.Mutex
	m  map[string]cachedTemplate
}

type cachedTemplate struct {
	modify uint64
	ct     *compiledTemplate
}

// compiled answers q's compiled template.
func (c *templateCache) compiled(q preparedQuery) (*compiledTemplate, error) {
	c.mu.Lock()
	if e, ok := c.m[q.ID]; ok && e.modify == q.ModifyIndex {
		c.mu.Unlock()
		return e.ct, nil
	}
	c.mu.Unlock()
	ct, err := compileTemplate(q)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= 1024 {
		c.m = map[string]cachedTemplate{} // deleted templates' entries go here
	}
	c.m[q.ID] = cachedTemplate{modify: q.ModifyIndex, ct: ct}
	return ct, nil
}
