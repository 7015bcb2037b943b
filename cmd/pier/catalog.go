package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"sort"
	"strings"
)

// The catalog command is `consul catalog datacenters|nodes|services` with
// its flags and plain output, for scripts written against Consul's CLI.

func runCatalog(args []string, stdout, stderr io.Writer) error {
	const want = "give a subcommand: datacenters, nodes or services"
	if len(args) == 0 {
		return usageError{want}
	}
	switch args[0] {
	case "datacenters":
		return catalogDatacenters(args[1:], stdout, stderr)
	case "nodes":
		return catalogNodes(args[1:], stdout, stderr)
	case "services":
		return catalogServices(args[1:], stdout, stderr)
	}
	return usageError{fmt.Sprintf("unknown catalog subcommand %q: %s", args[0], want)}
}

// queryFlags are the -node-meta and -filter flags of both listings.
type queryFlags struct {
	meta   stringList
	filter string
}

func (f *queryFlags) register(fs *flag.FlagSet, what string) {
	fs.Var(&f.meta, "node-meta", "only "+what+" with this node meta, key=value (repeatable)")
	fs.StringVar(&f.filter, "filter", "", "a filter expression, as the API's ?filter=")
}

// query is ?node-meta=key:value for each -node-meta, and ?filter=.
func (f *queryFlags) query() (url.Values, error) {
	q := url.Values{}
	for _, kv := range f.meta {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageError{fmt.Sprintf("-node-meta %q: want key=value", kv)}
		}
		q.Add("node-meta", k+":"+v)
	}
	if f.filter != "" {
		q.Set("filter", f.filter)
	}
	return q, nil
}

// queryCommand sets up a catalog listing: its flags (define adds them),
// -node-meta and -filter for what it lists, then the client and the query.
func queryCommand(name, what string, args []string, stderr io.Writer, define func(*flag.FlagSet)) (*client, *clientFlags, url.Values, error) {
	var qf queryFlags
	_, c, cf, err := apiCommand(name, args, stderr, func(fs *flag.FlagSet) {
		define(fs)
		qf.register(fs, what)
	})
	if err != nil {
		return nil, nil, nil, err
	}
	q, err := qf.query()
	if err != nil {
		return nil, nil, nil, err
	}
	return c, cf, q, nil
}

func catalogDatacenters(args []string, stdout, stderr io.Writer) error {
	return listCommand("catalog datacenters", "/v1/catalog/datacenters", args, stdout, stderr, func(dcs []string) error {
		for _, dc := range dcs {
			fmt.Fprintln(stdout, dc)
		}
		return nil
	})
}

type catalogNode struct {
	ID, Node, Address, Datacenter string
	TaggedAddresses, Meta         map[string]string
}

func catalogNodes(args []string, stdout, stderr io.Writer) error {
	var service string
	var detailed bool
	c, cf, q, err := queryCommand("catalog nodes", "nodes", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&service, "service", "", "only the nodes of instances of this service")
		fs.BoolVar(&detailed, "detailed", false, "also each node's tagged addresses and meta")
	})
	if err != nil {
		return err
	}
	var nodes []catalogNode
	if service == "" {
		err = c.do("GET", "/v1/catalog/nodes?"+q.Encode(), nil, &nodes)
	} else {
		// The nodes of a service's instances, each once.
		var ins []struct {
			ID, Node, Address, Datacenter string
			TaggedAddresses, NodeMeta     map[string]string
		}
		err = c.do("GET", "/v1/catalog/service/"+url.PathEscape(service)+"?"+q.Encode(), nil, &ins)
		seen := map[string]bool{}
		for _, in := range ins {
			if !seen[in.Node] {
				seen[in.Node] = true
				nodes = append(nodes, catalogNode{ID: in.ID, Node: in.Node, Address: in.Address, Datacenter: in.Datacenter,
					TaggedAddresses: in.TaggedAddresses, Meta: in.NodeMeta})
			}
		}
	}
	if err != nil {
		return err
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Node < nodes[j].Node })
	if cf.format == "json" {
		if nodes == nil {
			nodes = []catalogNode{}
		}
		return printJSON(stdout, nodes)
	}
	if len(nodes) == 0 {
		fmt.Fprintln(stderr, "No nodes match the given query - try expanding your search.")
		return nil
	}
	header := "Node\tID\tAddress\tDC"
	if detailed {
		header += "\tTaggedAddresses\tMeta"
	}
	tw := newTable(stdout, header)
	for _, n := range nodes {
		id := n.ID
		if !detailed && len(id) > 8 {
			id = id[:8] // as Consul shortens it
		}
		if detailed {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, id, n.Address, n.Datacenter, pairs(n.TaggedAddresses, ", "), pairs(n.Meta, ", "))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Node, id, n.Address, n.Datacenter)
		}
	}
	return tw.Flush()
}

// pairs prints a map as Consul's CLI does: k=v pairs in key order, with sep
// between them.
func pairs(m map[string]string, sep string) string {
	kvs := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		kvs = append(kvs, k+"="+m[k])
	}
	return strings.Join(kvs, sep)
}

func catalogServices(args []string, stdout, stderr io.Writer) error {
	var node string
	var tags bool
	c, cf, q, err := queryCommand("catalog services", "services on nodes", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&node, "node", "", "only the services of this node")
		fs.BoolVar(&tags, "tags", false, "also each service's tags")
	})
	if err != nil {
		return err
	}
	services := map[string][]string{}
	if node == "" {
		err = c.do("GET", "/v1/catalog/services?"+q.Encode(), nil, &services)
	} else {
		var n *struct {
			Services map[string]struct {
				Service string
				Tags    []string
			}
		}
		if err = c.do("GET", "/v1/catalog/node/"+url.PathEscape(node)+"?"+q.Encode(), nil, &n); err == nil && n == nil {
			return fmt.Errorf("no node %q in the catalog", node)
		}
		if n != nil {
			for _, s := range n.Services {
				services[s.Service] = append(services[s.Service], s.Tags...)
			}
		}
	}
	if err != nil {
		return err
	}
	names := make([]string, 0, len(services))
	for n, ts := range services {
		names = append(names, n)
		sort.Strings(ts)
		services[n] = slices.Compact(ts)
	}
	sort.Strings(names)
	if cf.format == "json" {
		return printJSON(stdout, services)
	}
	tw := newTable(stdout, "")
	for _, n := range names {
		if tags && len(services[n]) > 0 {
			fmt.Fprintf(tw, "%s\t%s\n", n, strings.Join(services[n], ","))
		} else {
			fmt.Fprintln(tw, n)
		}
	}
	return tw.Flush()
}
