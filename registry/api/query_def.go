package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Prepared queries (Consul's /v1/query): the definition, its parsing and
// validation. They live in the servers' Raft state, as KV entries under
// queryPrefix that the KV API neither shows nor writes, each name taken by
// a key under queryNamePrefix, so that a create or an update that would
// give two queries one name fails as a whole (a transaction).

const (
	queryPrefix     = registry.ReservedKVPrefix + "query/"
	queryNamePrefix = registry.ReservedKVPrefix + "query-name/"
	// queryTemplatePrefix holds each template's name, in lower case (as
	// Consul's index of templates), so that the longest prefix of a name
	// asked is a few key lookups; the empty name too (the key is the
	// prefix itself), which answers every name no other query does.
	queryTemplatePrefix = registry.ReservedKVPrefix + "query-template/"
)

// preparedQuery is Consul's structs.PreparedQuery, as its API writes it.
type preparedQuery struct {
	ID          string
	Name        string
	Session     string
	Token       string
	Service     queryService
	DNS         queryDNS
	Template    queryTemplate
	CreateIndex uint64
	ModifyIndex uint64
}

type queryService struct {
	Service        string
	Failover       queryFailover
	IgnoreCheckIDs []string
	OnlyPassing    bool
	Near           string
	Tags           []string
	NodeMeta       map[string]string
	ServiceMeta    map[string]string
	Connect        bool
}

type queryFailover struct {
	NearestN    int
	Datacenters []string
	Targets     []queryTarget `json:",omitempty"`
}

type queryTarget struct {
	Peer       string `json:",omitempty"`
	Datacenter string `json:",omitempty"`
}

type queryDNS struct{ TTL string }

type queryTemplate struct {
	Type            string
	Regexp          string
	RemoveEmptyTags bool
}

// redactedToken is what Consul shows in place of a query's token to those
// who may not read it.
const redactedToken = "<hidden>"

// parseQueryBody decodes and checks a create or update body, as Consul's
// parseQuery does; the error names the field.
func parseQueryBody(b []byte) (preparedQuery, error) {
	q, err := decodeQueryBody(b)
	if err != nil {
		return q, err
	}
	return q, q.validate()
}

// decodeQueryBody only decodes: the endpoints validate after the ACL
// check, as Consul's.
func decodeQueryBody(b []byte) (preparedQuery, error) {
	var q preparedQuery
	if err := json.Unmarshal(b, &q); err != nil {
		return q, badRequest("Request decode failed: %v", err)
	}
	return q, nil
}

func (q *preparedQuery) isTemplate() bool { return q.Template.Type != "" }

func (q *preparedQuery) validate() error {
	if err := q.validateFields(); err != nil {
		return err
	}
	if q.isTemplate() {
		// Consul compiles a template when the state store takes it; its
		// errors read "failed compiling template: ...".
		if _, err := compileTemplate(*q); err != nil {
			// The message quotes the field: one line, whatever it holds.
			return badRequest("failed compiling template: %s", strings.ReplaceAll(err.Error(), "\n", `\n`))
		}
	}
	return nil
}

func (q *preparedQuery) validateFields() error {
	switch {
	case q.Name == "" && !q.isTemplate() && q.Session == "":
		return badRequest("Must be bound to a session")
	case q.Token == redactedToken:
		return badRequest("Bad Token '%s', it looks like a query definition with a redacted token was submitted", q.Token)
	case q.Service.Service == "":
		return badRequest("Must provide a Service name to query")
	case q.Service.Failover.NearestN < 0:
		return badRequest("Bad NearestN '%d', must be >= 0", q.Service.Failover.NearestN)
	case (q.Service.Failover.NearestN != 0 || len(q.Service.Failover.Datacenters) != 0) && len(q.Service.Failover.Targets) != 0:
		return badRequest("Targets cannot be populated with NearestN or Datacenters")
	case q.Service.Connect:
		return badRequest("Service.Connect: Connect is not supported by pier")
	case len(q.Name) > registry.MaxKVKey-len(queryTemplatePrefix):
		return badRequest("Name: longer than %d bytes", registry.MaxKVKey-len(queryTemplatePrefix))
	case strings.Contains(q.Session, "/") || len(q.Session) > 64:
		return badRequest("invalid session %q", q.Session)
	case q.Service.Near != "" && strings.ContainsAny(q.Service.Near, "\x00"):
		return badRequest("Service.Near: not a node name")
	}
	for _, t := range q.Service.Failover.Targets {
		if t.Peer != "" {
			return badRequest("Service.Failover.Targets: peers are not supported by pier")
		}
	}
	if q.DNS.TTL != "" {
		ttl, err := time.ParseDuration(q.DNS.TTL)
		if err != nil {
			return badRequest("Bad DNS TTL '%s': %v", q.DNS.TTL, err)
		}
		if ttl < 0 {
			return badRequest("DNS TTL '%d', must be >=0", ttl)
		}
	}
	if _, err := registry.ParseNodeID(q.Name); err == nil {
		return badRequest("Name: a query name cannot be a UUID (it would shadow a query's ID)")
	}
	return nil
}

// failoverDatacenters is the order failover tries datacenters in, as
// Consul's: the NearestN nearest others, then the listed ones not tried
// yet that the WAN pool knows (others are skipped).
func (q *preparedQuery) failoverDatacenters(nearest []string) []string {
	known := map[string]bool{}
	for _, dc := range nearest {
		known[dc] = true
	}
	var out []string
	tried := map[string]bool{}
	for i, dc := range nearest {
		if i >= q.Service.Failover.NearestN {
			break
		}
		out, tried[dc] = append(out, dc), true
	}
	listed := q.Service.Failover.Datacenters
	for _, t := range q.Service.Failover.Targets {
		listed = append(listed, t.Datacenter)
	}
	for _, dc := range listed {
		if dc != "" && known[dc] && !tried[dc] {
			out, tried[dc] = append(out, dc), true
		}
	}
	return out
}

// keep says whether an instance is in the query's answer, as Consul's
// execute filters: critical ones out (warning too with OnlyPassing, the
// IgnoreCheckIDs not counted), node and service metadata, and tags
// (every one given; !tag: none of those; without case).
func (q *preparedQuery) keep(in registry.Instance) bool {
	st := registry.StatusPassing
	for _, c := range in.Checks {
		if containsFold(q.Service.IgnoreCheckIDs, c.CheckID) {
			continue
		}
		switch c.Status {
		case registry.StatusPassing:
		case registry.StatusWarning:
			st = registry.StatusWarning
		default:
			return false
		}
	}
	if q.Service.OnlyPassing && st != registry.StatusPassing {
		return false
	}
	for k, v := range q.Service.NodeMeta {
		if got, ok := in.Node.Meta[k]; !ok || got != v {
			return false
		}
	}
	for k, v := range q.Service.ServiceMeta {
		if got, ok := in.Service.Meta[k]; !ok || got != v {
			return false
		}
	}
	for _, t := range q.Service.Tags {
		if not, ok := strings.CutPrefix(t, "!"); ok {
			if containsFold(in.Service.Tags, not) {
				return false
			}
		} else if !containsFold(in.Service.Tags, t) {
			return false
		}
	}
	return true
}

func containsFold(list []string, s string) bool {
	for _, e := range list {
		if strings.EqualFold(e, s) {
			return true
		}
	}
	return false
}

// String names a query in logs.
func (q *preparedQuery) String() string { return fmt.Sprintf("%s (%s)", q.ID, q.Name) }
