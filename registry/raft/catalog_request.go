package raft

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/pier-dev/pier/registry"
)

// RegisterRequest is the body of Consul's PUT /v1/catalog/register, with
// which tools such as consul-esm and Terraform record nodes that run no
// agent ("external" nodes): the node, optionally one service, and checks.
// Fields of Consul's that pier has no use for (Namespace, Partition,
// PeerName, Connect's) are accepted and ignored.
type RegisterRequest struct {
	Datacenter      string `json:",omitempty"`
	ID              string `json:",omitempty"` // the node's UUID
	Node            string
	Address         string
	TaggedAddresses map[string]string `json:",omitempty"`
	NodeMeta        map[string]string `json:",omitempty"`
	Service         *RegisterService  `json:",omitempty"`
	Check           *RegisterCheck    `json:",omitempty"` // Consul's older single-check form
	Checks          []*RegisterCheck  `json:",omitempty"`
	// SkipNodeUpdate keeps an existing node's record as it is (then Address
	// may be empty), as Consul's.
	SkipNodeUpdate bool `json:",omitempty"`
}

// RegisterService is the Service of a RegisterRequest (Consul's
// NodeService). Service is the name; an empty ID is the name.
type RegisterService struct {
	ID                string                             `json:",omitempty"`
	Service           string                             `json:",omitempty"`
	Tags              []string                           `json:",omitempty"`
	Address           string                             `json:",omitempty"`
	TaggedAddresses   map[string]registry.ServiceAddress `json:",omitempty"`
	Meta              map[string]string                  `json:",omitempty"`
	Port              int                                `json:",omitempty"`
	Weights           *registry.Weights                  `json:",omitempty"` // nil: passing 1, warning 1
	EnableTagOverride bool                               `json:",omitempty"`
}

// RegisterCheck is one check of a RegisterRequest (Consul's HealthCheck).
// An empty CheckID is the Name, an empty Node the request's, an empty
// Status critical. Consul's Definition (how an agent would run it) and
// other fields are ignored when decoding: nobody runs an external node's
// checks but the tool that registers their results.
type RegisterCheck struct {
	Node      string `json:",omitempty"`
	CheckID   string `json:",omitempty"`
	Name      string `json:",omitempty"`
	Status    string `json:",omitempty"`
	Notes     string `json:",omitempty"`
	Output    string `json:",omitempty"`
	ServiceID string `json:",omitempty"`
}

// DeregisterRequest is the body of Consul's PUT /v1/catalog/deregister:
// with ServiceID it removes that service and its checks, else with CheckID
// that check, else the node with everything on it.
type DeregisterRequest struct {
	Datacenter string `json:",omitempty"`
	Node       string
	ServiceID  string `json:",omitempty"`
	CheckID    string `json:",omitempty"`
}

func fieldErr(field, format string, args ...any) error {
	return &registry.FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// checks returns Check and Checks together, with the field name of each.
func (r *RegisterRequest) checks() ([]*RegisterCheck, []string) {
	var out []*RegisterCheck
	var names []string
	if r.Check != nil {
		out, names = append(out, r.Check), append(names, "Check")
	}
	for i, c := range r.Checks {
		if c != nil {
			out, names = append(out, c), append(names, fmt.Sprintf("Checks[%d]", i))
		}
	}
	return out, names
}

// Validate checks the request as Consul's catalog endpoint does; the error
// (a *registry.FieldError, the API's 400) names the bad field, with
// Consul's wording where Consul has one.
func (r *RegisterRequest) Validate() error {
	if r.Node == "" {
		return fieldErr("Node", "Must provide node")
	}
	if err := validText("Node", r.Node); err != nil {
		return err
	}
	if r.ID != "" {
		if _, err := registry.ParseNodeID(r.ID); err != nil {
			return fieldErr("ID", "Bad node ID: %v", err)
		}
	}
	if r.Address == "" && !r.SkipNodeUpdate {
		return fieldErr("Address", "Must provide address if SkipNodeUpdate is not set")
	}
	if err := registry.ValidateMeta("NodeMeta", r.NodeMeta); err != nil {
		return err
	}
	if s := r.Service; s != nil {
		switch {
		case s.ID == "" && s.Service == "":
			return fieldErr("Service.Service", "service name (Service.Service) is required; both Service ID (Service.ID) and Service Name cannot be empty")
		case s.Service == "":
			return fieldErr("Service.Service", "Must provide service name (Service.Service) when service ID is provided")
		case isAny(s.Address):
			return fieldErr("Service.Address", "Invalid service address")
		case s.Port < 0 || s.Port > 65535:
			return fieldErr("Service.Port", "%d is not a port (0 to 65535)", s.Port)
		case s.Weights != nil && (s.Weights.Passing < 1 || s.Weights.Warning < 0):
			return fieldErr("Service.Weights", "Passing must be at least 1 and Warning at least 0")
		}
		if err := validText("Service.ID", s.ID); err != nil {
			return err
		}
		if err := validText("Service.Service", s.Service); err != nil {
			return err
		}
		for k, a := range s.TaggedAddresses {
			if a.Port < 0 || a.Port > 65535 {
				return fieldErr("Service.TaggedAddresses", "%q: %d is not a port (0 to 65535)", k, a.Port)
			}
		}
		if err := registry.ValidateMeta("Service.Meta", s.Meta); err != nil {
			return err
		}
	}
	checks, names := r.checks()
	for i, c := range checks {
		f := names[i]
		switch {
		case c.Node != "" && !strings.EqualFold(c.Node, r.Node):
			return fieldErr(f+".Node", "Node '%s' for check '%s' doesn't match register request node '%s'", c.Node, c.CheckID, r.Node)
		case c.CheckID == "" && c.Name == "":
			return fieldErr(f+".CheckID", "Must provide a check ID or name")
		}
		if err := validText(f+".CheckID", c.CheckID); err != nil {
			return err
		}
		switch registry.Status(c.Status) {
		case "", registry.StatusPassing, registry.StatusWarning, registry.StatusCritical, registry.StatusMaintenance:
		default:
			return fieldErr(f+".Status", "%q is not one of passing, warning, critical, maintenance", c.Status)
		}
	}
	return nil
}

// Validate checks a deregistration as Consul does.
func (r *DeregisterRequest) Validate() error {
	if r.Node == "" {
		return fieldErr("Node", "Must provide node")
	}
	return nil
}

// validText refuses what no name may hold: a NUL byte, or bytes that are
// not UTF-8 (which JSON, in the log and in answers, would change).
func validText(field, s string) error {
	if strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s) {
		return fieldErr(field, "%q is not valid UTF-8 text", s)
	}
	return nil
}

// isAny: Consul refuses a service address that means "every interface".
func isAny(addr string) bool {
	ip := net.ParseIP(strings.Trim(addr, "[]"))
	return ip != nil && ip.IsUnspecified()
}

// normalized applies Consul's defaults to a valid request: the single
// check joins Checks, a check's empty ID is its name and its empty status
// critical, a service's empty ID is its name; of two checks with one ID,
// the last.
func (r *RegisterRequest) normalized() RegisterRequest {
	out := *r
	out.Check = nil
	checks, _ := r.checks()
	out.Checks = make([]*RegisterCheck, 0, len(checks))
	for _, c := range checks {
		cc := *c
		cc.Node = r.Node
		if cc.CheckID == "" {
			cc.CheckID = cc.Name
		}
		if cc.Status == "" {
			cc.Status = string(registry.StatusCritical)
		}
		// The same check twice in one request: the last one wins, so that
		// the request applied again changes nothing.
		out.Checks = slices.DeleteFunc(out.Checks, func(o *RegisterCheck) bool { return o.CheckID == cc.CheckID })
		out.Checks = append(out.Checks, &cc)
	}
	if r.Service != nil {
		s := *r.Service
		if s.ID == "" {
			s.ID = s.Service
		}
		out.Service = &s
	}
	return out
}

// service is the catalog's record of the request's service.
func (s *RegisterService) service() registry.Service {
	out := registry.Service{
		ID: s.ID, Name: s.Service, Tags: s.Tags, Address: s.Address, Port: s.Port, Meta: s.Meta,
		TaggedAddresses: s.TaggedAddresses, EnableTagOverride: s.EnableTagOverride,
		Weights: registry.Weights{Passing: 1, Warning: 1},
	}
	if out.Tags == nil {
		out.Tags = []string{}
	}
	if s.Weights != nil {
		out.Weights = *s.Weights
	}
	return out
}
