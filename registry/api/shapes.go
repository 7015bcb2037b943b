package api

import "github.com/pier-dev/pier/registry"

// The JSON shapes below follow Consul's field names and casing exactly;
// clients decode them by name.

type weights struct {
	Passing int
	Warning int
}

type agentService struct {
	ID                string
	Service           string
	Tags              []string
	Meta              map[string]string
	Port              int
	Ports             []registry.ServicePort `json:",omitempty" bexpr:"-"`
	Address           string
	SocketPath        string                             `json:",omitempty"`
	TaggedAddresses   map[string]registry.ServiceAddress `json:",omitempty"`
	Weights           weights
	EnableTagOverride bool
	ContentHash       string `json:",omitempty"`
	Datacenter        string
	// The catalog's indexes, in the catalog's and health's answers; the
	// agent's own endpoints leave them out, as Consul's do.
	CreateIndex uint64             `json:",omitempty"`
	ModifyIndex uint64             `json:",omitempty"`
	Locality    *registry.Locality `json:",omitempty" bexpr:"-"`
}

type catalogService struct {
	ID                       string
	Node                     string
	Address                  string
	Datacenter               string
	TaggedAddresses          map[string]string
	NodeMeta                 map[string]string
	ServiceKind              string
	ServiceID                string
	ServiceName              string
	ServiceTags              []string
	ServiceAddress           string
	ServiceTaggedAddresses   map[string]registry.ServiceAddress `json:",omitempty"`
	ServiceWeights           weights
	ServiceMeta              map[string]string
	ServicePort              int
	ServicePorts             []registry.ServicePort `bexpr:"-"`
	ServiceSocketPath        string
	ServiceEnableTagOverride bool
	ServiceLocality          *registry.Locality `bexpr:"-"`
	CreateIndex              uint64
	ModifyIndex              uint64
}

type node struct {
	ID              string
	Node            string
	Address         string
	Datacenter      string
	TaggedAddresses map[string]string
	Meta            map[string]string
	Locality        *registry.Locality `json:",omitempty" bexpr:"-"`
	CreateIndex     uint64
	ModifyIndex     uint64
}

type nodeServices struct {
	Node     node
	Services map[string]agentService
}

type healthCheck struct {
	Node        string
	CheckID     string
	Name        string
	Status      registry.Status
	Notes       string
	Output      string
	ServiceID   string
	ServiceName string
	ServiceTags []string
	Type        string
	Interval    string `json:",omitempty"`
	Timeout     string `json:",omitempty"`
	Definition  registry.CheckDefinition
	CreateIndex uint64
	ModifyIndex uint64
}

type serviceEntry struct {
	Node    node
	Service agentService
	Checks  []healthCheck
}

type member struct {
	Name        string
	Addr        string
	Port        int
	Tags        map[string]string
	Status      int
	ProtocolMin int
	ProtocolMax int
	ProtocolCur int
	DelegateMin int
	DelegateMax int
	DelegateCur int
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func mapOrEmpty[V any](m map[string]V) map[string]V {
	if m == nil {
		return map[string]V{}
	}
	return m
}

func toAgentService(e *registry.ServiceEntry, dc string) agentService {
	return agentService{
		ID:                e.ID,
		Service:           e.Name,
		Tags:              orEmpty(e.Tags),
		Meta:              mapOrEmpty(e.Meta),
		Port:              e.Port,
		Ports:             e.Ports,
		Address:           e.Address,
		SocketPath:        e.SocketPath,
		TaggedAddresses:   e.TaggedAddresses,
		Weights:           weights(e.Weights),
		EnableTagOverride: e.EnableTagOverride,
		Datacenter:        dc,
		Locality:          e.Locality,
	}
}

// toCatalogNodeService is a service as the catalog and health endpoints
// show it: the agent's shape with the catalog's indexes.
func toCatalogNodeService(e *registry.ServiceEntry, dc string) agentService {
	s := toAgentService(e, dc)
	s.CreateIndex, s.ModifyIndex = e.CreateIndex, e.ModifyIndex
	return s
}

func toNode(n *registry.NodeEntry) node {
	return node{
		ID:              n.ID,
		Node:            n.Name,
		Address:         n.Address,
		Datacenter:      n.Datacenter,
		TaggedAddresses: mapOrEmpty(n.TaggedAddresses),
		Meta:            mapOrEmpty(n.Meta),
		Locality:        n.Locality,
		CreateIndex:     n.CreateIndex,
		ModifyIndex:     n.ModifyIndex,
	}
}

func toCatalogService(n *registry.NodeEntry, e *registry.ServiceEntry) catalogService {
	return catalogService{
		ID:                       n.ID,
		Node:                     n.Name,
		Address:                  n.Address,
		Datacenter:               n.Datacenter,
		TaggedAddresses:          mapOrEmpty(n.TaggedAddresses),
		NodeMeta:                 mapOrEmpty(n.Meta),
		ServiceID:                e.ID,
		ServiceName:              e.Name,
		ServiceTags:              orEmpty(e.Tags),
		ServiceAddress:           e.Address,
		ServiceTaggedAddresses:   e.TaggedAddresses,
		ServiceWeights:           weights(e.Weights),
		ServiceMeta:              mapOrEmpty(e.Meta),
		ServicePort:              e.Port,
		ServicePorts:             e.Ports,
		ServiceSocketPath:        e.SocketPath,
		ServiceEnableTagOverride: e.EnableTagOverride,
		ServiceLocality:          e.Locality,
		CreateIndex:              e.CreateIndex,
		ModifyIndex:              e.ModifyIndex,
	}
}

func toHealthCheck(c *registry.CheckEntry) healthCheck {
	h := healthCheck{
		Node:        c.Node,
		CheckID:     c.CheckID,
		Name:        c.Name,
		Status:      c.Status,
		Notes:       c.Notes,
		Output:      c.Output,
		ServiceID:   c.ServiceID,
		ServiceName: c.ServiceName,
		ServiceTags: orEmpty(c.ServiceTags),
		Type:        c.Definition.Type(),
		Definition:  c.Definition,
		CreateIndex: c.CreateIndex,
		ModifyIndex: c.ModifyIndex,
	}
	if c.Definition.Interval > 0 {
		h.Interval = durationString(c.Definition.Interval)
	}
	if c.Definition.Timeout > 0 {
		h.Timeout = durationString(c.Definition.Timeout)
	}
	return h
}

func durationString(d registry.Duration) string {
	b, _ := d.MarshalJSON()
	return string(b[1 : len(b)-1])
}

func toHealthChecks(cs []*registry.CheckEntry) []healthCheck {
	out := make([]healthCheck, 0, len(cs))
	for _, c := range cs {
		out = append(out, toHealthCheck(c))
	}
	return out
}
