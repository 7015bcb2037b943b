package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// FieldError is a validation error that names the offending field, so the
// API can answer with one line a person can act on.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ServiceDefinition is a service registration as Consul's clients send it
// (AgentServiceRegistration) and as config files write it.
type ServiceDefinition struct {
	Kind              string
	ID                string
	Name              string
	Tags              []string
	Address           string
	Port              *int // nil: no port; an explicit 0 is an error
	Meta              map[string]string
	Weights           *Weights
	TaggedAddresses   map[string]ServiceAddress
	EnableTagOverride bool
	Ports             []ServicePort // Consul 1.22's named ports; exclusive with Port
	SocketPath        string
	Locality          *Locality
	Check             *CheckRegistration
	Checks            []*CheckRegistration

	// Consul Connect, which pier leaves out: read only to be refused, so
	// that a registration that asks for a sidecar is not taken as done.
	Connect *ConnectDefinition
	Proxy   json.RawMessage
}

// ConnectDefinition is a registration's Connect block.
type ConnectDefinition struct {
	Native         bool
	SidecarService json.RawMessage
}

// CheckRegistration is a check as Consul's clients send it, alone
// (AgentCheckRegistration) or inside a service registration (CheckType).
// Durations stay raw until Build so that an error can name its field.
type CheckRegistration struct {
	ID                             string // AgentCheckRegistration's name for CheckID
	CheckID                        string
	Name                           string
	Notes                          string
	Status                         string
	ServiceID                      string
	HTTP                           string
	Method                         string
	Header                         map[string][]string
	Body                           string
	TLSServerName                  string
	TLSSkipVerify                  bool
	TCP                            string
	GRPC                           string
	GRPCUseTLS                     bool
	Args                           []string
	ScriptArgs                     []string // older name for Args
	DockerContainerID              string
	Shell                          string
	TTL                            json.RawMessage
	Interval                       json.RawMessage
	Timeout                        json.RawMessage
	SuccessBeforePassing           int
	FailuresBeforeWarning          int
	FailuresBeforeCritical         int
	DeregisterCriticalServiceAfter json.RawMessage
}

// DecodeService decodes one service definition from JSON. Keys match as in
// config files (DecodeConfig): ignoring case, '_' and '-', so Consul's
// "EnableTagOverride" and "enable_tag_override" both work, and the keys of
// Meta, Header and TaggedAddresses are kept as written. With strict set,
// unknown keys are an error (config files, where a typo should stop the
// agent); otherwise they are ignored, as Consul's HTTP API does.
func DecodeService(data []byte, strict bool) (*ServiceDefinition, error) {
	var def ServiceDefinition
	if err := decodeDefinition(data, &def, strict); err != nil {
		return nil, err
	}
	return &def, nil
}

// DecodeCheck decodes one standalone check registration from JSON.
func DecodeCheck(data []byte, strict bool) (*CheckRegistration, error) {
	var def CheckRegistration
	if err := decodeDefinition(data, &def, strict); err != nil {
		return nil, err
	}
	return &def, nil
}

// decodeDefinition reads one JSON object into v; its errors are
// FieldErrors, which the API answers with 400 and one line.
func decodeDefinition(data []byte, v any, strict bool) error {
	dec := jsontext.NewDecoder(bytes.NewReader(data), jsontext.AllowInvalidUTF8(true), jsontext.AllowDuplicateNames(true))
	val, err := dec.ReadValue()
	if err != nil {
		return jsonError(nil, err)
	}
	val = val.Clone() // the next read reuses the decoder's buffer
	if _, err := dec.ReadValue(); err != io.EOF {
		return &FieldError{Msg: "malformed JSON: more than one value in body"}
	}
	if val.Kind() != '{' {
		return &FieldError{Msg: "malformed JSON: expected an object"}
	}
	opts := configOptions()
	if !strict {
		// As Consul's HTTP API: unknown keys are ignored, and a key given
		// twice takes the last value.
		opts = jsonv2.JoinOptions(opts, jsonv2.RejectUnknownMembers(false), jsontext.AllowDuplicateNames(true))
	}
	return jsonError(reflect.TypeOf(v), jsonv2.Unmarshal(val, v, opts))
}

// goPath names the field at p with the Go names of t's fields, Consul's
// canonical spelling (Checks[0].Interval), whatever spelling the body used.
func goPath(t reflect.Type, p jsontext.Pointer) string {
	if t == nil {
		return configKey("", p)
	}
	var b strings.Builder
	fold := func(s string) string { return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s)) }
	for tok := range p.Tokens() {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch t.Kind() {
		case reflect.Slice, reflect.Array:
			b.WriteString("[" + tok + "]")
			t = t.Elem()
			continue
		case reflect.Map:
			t = t.Elem()
		case reflect.Struct:
			for i := range t.NumField() {
				if f := t.Field(i); f.IsExported() && fold(f.Name) == fold(tok) {
					tok, t = f.Name, f.Type
					break
				}
			}
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}

func jsonError(t reflect.Type, err error) error {
	var se *jsonv2.SemanticError
	var syn *jsontext.SyntacticError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		field := goPath(t, se.JSONPointer)
		if field == "" {
			field = "body"
		}
		switch {
		case errors.Is(se.Err, jsonv2.ErrUnknownName):
			return fieldErr(field, "unknown field")
		case se.Err != nil:
			return fieldErr(field, "%v", se.Err)
		case se.GoType != nil:
			// The words encoding/json used, which API clients have seen.
			got := map[jsontext.Kind]string{'n': "null", 'f': "bool", 't': "bool", '"': "string", '0': "number", '{': "object", '[': "array"}[se.JSONKind]
			return fieldErr(field, "expected %s, got %s", se.GoType, got)
		}
		return fieldErr(field, "%v", err)
	case errors.As(err, &syn):
		if errors.Is(syn.Err, jsontext.ErrDuplicateName) {
			return fieldErr(goPath(t, syn.JSONPointer), "given twice (keys match ignoring case, '_' and '-')")
		}
		if errors.Is(syn.Err, io.ErrUnexpectedEOF) {
			return &FieldError{Msg: "malformed JSON: unexpected end of body"}
		}
		return &FieldError{Msg: fmt.Sprintf("malformed JSON at offset %d: %v", syn.ByteOffset, syn.Err)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &FieldError{Msg: "malformed JSON: unexpected end of body"}
	}
	return &FieldError{Msg: "malformed JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
}

// Limits on Meta, as Consul enforces them.
const (
	metaMaxPairs    = 64
	metaMaxKeyLen   = 128
	metaMaxValueLen = 512
	maxNameLen      = 256
)

var metaKeyRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-zA-Z0-9_-]+$`) })

// ValidateMeta applies Consul's rules for Meta maps; field names the map.
func ValidateMeta(field string, meta map[string]string) error {
	if len(meta) > metaMaxPairs {
		return fieldErr(field, "too many pairs (%d, limit %d)", len(meta), metaMaxPairs)
	}
	for k, v := range meta {
		switch {
		case k == "":
			return fieldErr(field, "empty key")
		case len(k) > metaMaxKeyLen:
			return fieldErr(field, "key %.20q... is too long (limit %d characters)", k, metaMaxKeyLen)
		case !metaKeyRE().MatchString(k):
			return fieldErr(field, "key %q has invalid characters (allowed: a-z A-Z 0-9 _ -)", k)
		case strings.HasPrefix(k, "consul-"):
			return fieldErr(field, "key %q uses the reserved prefix consul-", k)
		case len(v) > metaMaxValueLen:
			return fieldErr(field, "value of key %q is too long (limit %d characters)", k, metaMaxValueLen)
		}
	}
	return nil
}

func validName(field, s string, required bool) error {
	if s == "" {
		if required {
			return fieldErr(field, "missing (required)")
		}
		return nil
	}
	if len(s) > maxNameLen {
		return fieldErr(field, "too long (limit %d characters)", maxNameLen)
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return fieldErr(field, "%q contains whitespace or control characters", s)
		}
	}
	return nil
}

// validPathID refuses an ID that the API could not address in a path such
// as /v1/agent/service/<id> or /v1/agent/check/deregister/<id>: path
// cleaning rewrites ".", "..", "a//b" or "/a" before any handler sees
// them, so such a service or check could be registered but never read or
// deregistered.
func validPathID(field, s string) error {
	p := "/" + s
	if s != "" && path.Clean(p) != strings.TrimSuffix(p, "/") {
		return fieldErr(field, "%q has an empty, \".\" or \"..\" path segment", s)
	}
	return nil
}

func validAddress(field, s string) error {
	if s == "" {
		return nil
	}
	if net.ParseIP(s) != nil {
		return nil
	}
	if len(s) > 253 {
		return fieldErr(field, "too long")
	}
	for _, r := range s {
		if !(r == '-' || r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fieldErr(field, "%q is neither an IP address nor a host name", s)
		}
	}
	return nil
}

func validPort(field string, p int) error {
	if p < 1 || p > 65535 {
		return fieldErr(field, "%d is out of range (1-65535)", p)
	}
	return nil
}

// Build validates the definition and returns the service and its checks, with
// defaults applied (ID from Name, weights 1/1, check IDs as Consul makes
// them).
func (d *ServiceDefinition) Build() (Service, []Check, error) {
	var s Service
	if d.Kind != "" {
		return s, nil, fieldErr("Kind", "%q services are not supported (Consul Connect is not part of pier)", d.Kind)
	}
	if err := d.refuseConnect(); err != nil {
		return s, nil, err
	}
	if err := validName("Name", d.Name, true); err != nil {
		return s, nil, err
	}
	s.Name = d.Name
	s.ID = d.ID
	if s.ID == "" {
		s.ID = d.Name
	}
	if err := validName("ID", s.ID, true); err != nil {
		return s, nil, err
	}
	if err := validPathID("ID", s.ID); err != nil {
		return s, nil, err
	}
	for i, t := range d.Tags {
		if strings.ContainsFunc(t, unicode.IsControl) {
			return s, nil, fieldErr(fmt.Sprintf("Tags[%d]", i), "contains control characters")
		}
	}
	if len(d.Tags) > 0 {
		s.Tags = append([]string(nil), d.Tags...)
	}
	if err := validAddress("Address", d.Address); err != nil {
		return s, nil, err
	}
	s.Address = d.Address
	if d.Port != nil {
		if err := validPort("Port", *d.Port); err != nil {
			return s, nil, err
		}
		s.Port = *d.Port
	}
	if len(d.Ports) > 0 {
		if d.Port != nil {
			return s, nil, fieldErr("Ports", "cannot be set together with Port (mark the default port with Default: true instead)")
		}
		def, err := validPorts(d.Ports)
		if err != nil {
			return s, nil, err
		}
		s.Ports = append([]ServicePort(nil), d.Ports...)
		s.Port = def
	}
	if strings.ContainsFunc(d.SocketPath, unicode.IsControl) {
		return s, nil, fieldErr("SocketPath", "contains control characters")
	}
	s.SocketPath = d.SocketPath
	if err := d.Locality.Validate("Locality"); err != nil {
		return s, nil, err
	}
	if d.Locality != nil && *d.Locality != (Locality{}) {
		l := *d.Locality
		s.Locality = &l
	}
	if err := ValidateMeta("Meta", d.Meta); err != nil {
		return s, nil, err
	}
	if len(d.Meta) > 0 {
		s.Meta = make(map[string]string, len(d.Meta))
		for k, v := range d.Meta {
			s.Meta[k] = v
		}
	}
	s.Weights = Weights{Passing: 1, Warning: 1}
	if d.Weights != nil {
		if d.Weights.Passing < 1 {
			return s, nil, fieldErr("Weights.Passing", "must be at least 1")
		}
		if d.Weights.Warning < 0 {
			return s, nil, fieldErr("Weights.Warning", "must not be negative")
		}
		s.Weights = *d.Weights
	}
	for k, a := range d.TaggedAddresses {
		f := "TaggedAddresses." + k
		if err := validAddress(f+".Address", a.Address); err != nil {
			return s, nil, err
		}
		if a.Port != 0 {
			if err := validPort(f+".Port", a.Port); err != nil {
				return s, nil, err
			}
		}
		if s.TaggedAddresses == nil {
			s.TaggedAddresses = make(map[string]ServiceAddress, len(d.TaggedAddresses))
		}
		s.TaggedAddresses[k] = a
	}
	s.EnableTagOverride = d.EnableTagOverride

	type reg struct {
		field string
		cr    *CheckRegistration
	}
	// An empty check ({}) is no check, as Consul reads it.
	var regs []reg
	if d.Check != nil && !d.Check.empty() {
		regs = append(regs, reg{"Check", d.Check})
	}
	for i, cr := range d.Checks {
		if cr != nil && !cr.empty() {
			regs = append(regs, reg{fmt.Sprintf("Checks[%d]", i), cr})
		}
	}
	var checks []Check
	seen := map[string]bool{}
	for i, r := range regs {
		c, err := r.cr.build(r.field)
		if err != nil {
			return s, nil, err
		}
		if c.CheckID == "" {
			c.CheckID = "service:" + s.ID
			if len(regs) > 1 {
				c.CheckID += ":" + strconv.Itoa(i+1)
			}
		}
		if seen[c.CheckID] {
			return s, nil, fieldErr(r.field+".CheckID", "duplicate check ID %q", c.CheckID)
		}
		seen[c.CheckID] = true
		if c.Name == "" {
			c.Name = "Service '" + s.Name + "' check"
		}
		c.ServiceID = s.ID
		c.ServiceName = s.Name
		checks = append(checks, c)
	}
	return s, checks, nil
}

// refuseConnect names the Connect field a registration sets: pier has no
// Connect, and a sidecar that is silently not registered would look like a
// working mesh.
func (d *ServiceDefinition) refuseConnect() error {
	const why = "not supported (Consul Connect is not part of pier)"
	if d.Connect != nil {
		if sc := bytes.TrimSpace(d.Connect.SidecarService); len(sc) > 0 && string(sc) != "null" {
			return fieldErr("Connect.SidecarService", "sidecar services are %s", why)
		}
		if d.Connect.Native {
			return fieldErr("Connect.Native", "Connect-native services are %s", why)
		}
	}
	if p := bytes.TrimSpace(d.Proxy); len(p) > 0 && string(p) != "null" && string(p) != "{}" {
		return fieldErr("Proxy", "proxy configuration is %s", why)
	}
	return nil
}

// validPorts applies Consul's rules for Ports (unique non-empty names,
// exactly one Default) with pier's port range, and returns the default port.
func validPorts(ports []ServicePort) (int, error) {
	seen := make(map[string]bool, len(ports))
	def := 0
	for i, p := range ports {
		f := fmt.Sprintf("Ports[%d]", i)
		if strings.TrimSpace(p.Name) == "" {
			return 0, fieldErr(f+".Name", "missing (required)")
		}
		if err := validName(f+".Name", p.Name, true); err != nil {
			return 0, err
		}
		if seen[p.Name] {
			return 0, fieldErr(f+".Name", "%q is used by another port (names must be unique)", p.Name)
		}
		seen[p.Name] = true
		if err := validPort(f+".Port", p.Port); err != nil {
			return 0, err
		}
		if p.Default {
			if def != 0 {
				return 0, fieldErr(f+".Default", "only one port can be the default")
			}
			def = p.Port
		}
	}
	if def == 0 {
		return 0, fieldErr("Ports", "one of the ports must be marked Default: true")
	}
	return def, nil
}

func (cr *CheckRegistration) empty() bool {
	return reflect.ValueOf(*cr).IsZero()
}

// BuildCheck validates a standalone check registration.
func (cr *CheckRegistration) BuildCheck() (Check, error) {
	c, err := cr.build("")
	if err != nil {
		return c, err
	}
	if c.Name == "" {
		return c, fieldErr("Name", "missing (required)")
	}
	if c.CheckID == "" {
		c.CheckID = c.Name
	}
	if err := validPathID("CheckID", c.CheckID); err != nil {
		return c, err
	}
	c.ServiceID = cr.ServiceID
	return c, nil
}

func parseDuration(field string, raw json.RawMessage) (Duration, error) {
	if len(raw) == 0 {
		return 0, nil
	}
	var d Duration
	if err := d.UnmarshalJSON(raw); err != nil {
		return 0, fieldErr(field, "%v (use a Go duration such as \"10s\" or \"1m30s\")", err)
	}
	return d, nil
}

func (cr *CheckRegistration) build(field string) (Check, error) {
	f := func(name string) string {
		if field == "" {
			return name
		}
		return field + "." + name
	}
	var c Check
	c.CheckID = cr.CheckID
	if c.CheckID == "" {
		c.CheckID = cr.ID
	}
	if err := validName(f("CheckID"), strings.ReplaceAll(c.CheckID, " ", "_"), false); err != nil {
		return c, err
	}
	if err := validPathID(f("CheckID"), c.CheckID); err != nil {
		return c, err
	}
	c.Name = cr.Name
	c.Notes = cr.Notes
	c.Status = StatusCritical // Consul's default: not healthy until proven
	if cr.Status != "" {
		st, err := ParseStatus(cr.Status)
		if err != nil {
			return c, fieldErr(f("Status"), "%q: %v", cr.Status, err)
		}
		c.Status = st
	}
	def := CheckDefinition{
		HTTP: cr.HTTP, Method: cr.Method, Header: cr.Header, Body: cr.Body,
		TLSServerName: cr.TLSServerName, TLSSkipVerify: cr.TLSSkipVerify,
		TCP: cr.TCP, GRPC: cr.GRPC, GRPCUseTLS: cr.GRPCUseTLS,
		Args:                   cr.Args,
		SuccessBeforePassing:   cr.SuccessBeforePassing,
		FailuresBeforeWarning:  cr.FailuresBeforeWarning,
		FailuresBeforeCritical: cr.FailuresBeforeCritical,
	}
	if len(def.Args) == 0 {
		def.Args = cr.ScriptArgs
	}
	def.DockerContainerID, def.Shell = cr.DockerContainerID, cr.Shell
	if def.DockerContainerID != "" {
		if len(def.Args) == 0 {
			return c, fieldErr(f("Args"), "required with DockerContainerID: the command to run inside the container")
		}
		if err := validName(f("DockerContainerID"), def.DockerContainerID, true); err != nil {
			return c, err
		}
		if strings.ContainsAny(def.DockerContainerID, "/?#%") {
			return c, fieldErr(f("DockerContainerID"), "%q is not a container ID or name", def.DockerContainerID)
		}
	}
	if strings.ContainsFunc(def.Shell, unicode.IsControl) {
		return c, fieldErr(f("Shell"), "contains control characters")
	}
	var err error
	if def.TTL, err = parseDuration(f("TTL"), cr.TTL); err != nil {
		return c, err
	}
	if def.Interval, err = parseDuration(f("Interval"), cr.Interval); err != nil {
		return c, err
	}
	if def.Timeout, err = parseDuration(f("Timeout"), cr.Timeout); err != nil {
		return c, err
	}
	if def.DeregisterCriticalServiceAfter, err = parseDuration(f("DeregisterCriticalServiceAfter"), cr.DeregisterCriticalServiceAfter); err != nil {
		return c, err
	}
	kinds := 0
	for _, set := range []bool{def.HTTP != "", def.TCP != "", def.GRPC != "", len(def.Args) > 0, def.TTL > 0} {
		if set {
			kinds++
		}
	}
	switch {
	case kinds == 0:
		return c, fieldErr(field, "no check type: set one of HTTP, TCP, GRPC, TTL or Args")
	case kinds > 1:
		return c, fieldErr(field, "more than one check type: set only one of HTTP, TCP, GRPC, TTL or Args")
	case def.TTL == 0 && def.Interval == 0:
		return c, fieldErr(f("Interval"), "required for %s checks", strings.ToUpper(def.Type()))
	case def.Interval > 0 && time.Duration(def.Interval) < time.Second:
		def.Interval = Duration(time.Second) // Consul's floor; faster probing only adds load
	}
	if def.HTTP != "" && !strings.HasPrefix(def.HTTP, "http://") && !strings.HasPrefix(def.HTTP, "https://") {
		return c, fieldErr(f("HTTP"), "%q is not an http:// or https:// URL", def.HTTP)
	}
	if def.TCP != "" {
		if _, _, err := net.SplitHostPort(def.TCP); err != nil {
			return c, fieldErr(f("TCP"), "%q is not host:port", def.TCP)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"SuccessBeforePassing", def.SuccessBeforePassing}, {"FailuresBeforeWarning", def.FailuresBeforeWarning}, {"FailuresBeforeCritical", def.FailuresBeforeCritical}} {
		if n.v < 0 {
			return c, fieldErr(f(n.name), "must not be negative")
		}
	}
	c.Definition = def
	return c, nil
}
