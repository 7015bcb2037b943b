package registry

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Status is the health of a check, and the aggregate health of an instance.
type Status string

// The statuses Consul uses. Maintenance is reported as critical by the
// aggregate, as Consul does, so a service in maintenance leaves every answer.
const (
	StatusPassing     Status = "passing"
	StatusWarning     Status = "warning"
	StatusCritical    Status = "critical"
	StatusMaintenance Status = "maintenance"
)

// ParseStatus accepts the names Consul accepts in a check's initial Status.
func ParseStatus(s string) (Status, error) {
	switch Status(s) {
	case StatusPassing, StatusWarning, StatusCritical:
		return Status(s), nil
	}
	return "", fmt.Errorf("must be one of passing, warning, critical")
}

// worse reports whether a is a worse status than b.
func worse(a, b Status) bool { return rank(a) > rank(b) }

func rank(s Status) int {
	switch s {
	case StatusPassing:
		return 0
	case StatusWarning:
		return 1
	default: // critical, maintenance, and anything unknown
		return 2
	}
}

// Node is a member of the cluster as the catalog shows it.
type Node struct {
	ID              string // a UUID, kept in the data dir across restarts
	Name            string
	Address         string
	Datacenter      string
	TaggedAddresses map[string]string
	Meta            map[string]string
	Locality        *Locality `json:",omitempty"` // the agent's locality config; nil when not set
}

// Locality says where a node or a service instance runs, as Consul's
// Locality: a region and, within it, a zone.
type Locality struct {
	Region string
	Zone   string
}

// Validate applies Consul's rule: a zone only within a region.
func (l *Locality) Validate(field string) error {
	if l != nil && l.Region == "" && l.Zone != "" {
		return fieldErr(field+".Zone", "cannot be set without %s.Region", field)
	}
	return nil
}

// ServicePort is one named port of a multi-port service, as Consul 1.22's
// Ports entries.
type ServicePort struct {
	Name    string
	Port    int
	Default bool
}

// Weights are the relative weights of an instance when it is passing or
// warning, used by DNS SRV answers and the proxy's load balancer.
type Weights struct {
	Passing int
	Warning int
}

// ServiceAddress is one entry of a service's TaggedAddresses.
type ServiceAddress struct {
	Address string
	Port    int
}

// Service is one instance of a service on one node.
type Service struct {
	ID                string
	Name              string
	Tags              []string
	Address           string
	Port              int
	Meta              map[string]string
	Weights           Weights
	TaggedAddresses   map[string]ServiceAddress
	EnableTagOverride bool
	// Ports are the named ports of a multi-port service; Port then holds
	// the default one, so every reader that knows one port (DNS, the
	// proxy's pools, checks) uses it as Consul's DefaultPort does.
	Ports      []ServicePort `json:",omitempty"`
	SocketPath string        `json:",omitempty"` // a unix socket the instance listens on
	Locality   *Locality     `json:",omitempty"` // the instance's own; nil when it has none
}

// NamedPort returns the port called name among s.Ports.
func (s *Service) NamedPort(name string) (int, bool) {
	for _, p := range s.Ports {
		if p.Name == name {
			return p.Port, true
		}
	}
	return 0, false
}

// CheckDefinition says how a check is run. The health package reads it; the
// catalog only stores and shows it.
type CheckDefinition struct {
	HTTP                           string              `json:",omitempty"`
	Method                         string              `json:",omitempty"`
	Header                         map[string][]string `json:",omitempty"`
	Body                           string              `json:",omitempty"`
	TLSServerName                  string              `json:",omitempty"`
	TLSSkipVerify                  bool                `json:",omitempty"`
	TCP                            string              `json:",omitempty"`
	TTL                            Duration            `json:",omitempty"`
	GRPC                           string              `json:",omitempty"`
	GRPCUseTLS                     bool                `json:",omitempty"`
	Args                           []string            `json:",omitempty"`
	DockerContainerID              string              `json:",omitempty"` // Args run inside this container (docker exec)
	Shell                          string              `json:",omitempty"` // stored and shown, as Consul; Args run without a shell
	Interval                       Duration            `json:",omitempty"`
	Timeout                        Duration            `json:",omitempty"`
	SuccessBeforePassing           int                 `json:",omitempty"`
	FailuresBeforeWarning          int                 `json:",omitempty"`
	FailuresBeforeCritical         int                 `json:",omitempty"`
	DeregisterCriticalServiceAfter Duration            `json:",omitempty"`
}

// Type names the kind of check as Consul's HealthCheck.Type does.
func (d *CheckDefinition) Type() string {
	switch {
	case d.HTTP != "":
		return "http"
	case d.TCP != "":
		return "tcp"
	case d.GRPC != "":
		return "grpc"
	case len(d.Args) > 0 && d.DockerContainerID != "":
		return "docker"
	case len(d.Args) > 0:
		return "script"
	case d.TTL > 0:
		return "ttl"
	}
	return ""
}

// Check is a health check of a node (ServiceID empty) or of one service.
type Check struct {
	CheckID     string
	Name        string
	Status      Status
	Notes       string
	Output      string
	ServiceID   string
	ServiceName string
	ServiceTags []string
	Definition  CheckDefinition
}

// Duration is a time.Duration that decodes from Consul's forms: a Go
// duration string ("10s", "120000ms") or a number of nanoseconds.
type Duration time.Duration

// MarshalJSON writes the Go duration string, as Consul shows durations.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON accepts a duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s == "" {
			*d = 0
			return nil
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q", s)
		}
		if v < 0 {
			return fmt.Errorf("negative duration %q", s)
		}
		*d = Duration(v)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("invalid duration %s", b)
	}
	*d = Duration(n)
	return nil
}
