package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
)

// consul acl role, and the identity flags that roles and tokens share.

type serviceIdentityOut struct {
	ServiceName string
	Datacenters []string `json:",omitempty"`
}

type nodeIdentityOut struct {
	NodeName   string
	Datacenter string
}

type aclRoleOut struct {
	ID                string
	Name              string
	Description       string
	Policies          []aclLinkOut         `json:",omitempty"`
	ServiceIdentities []serviceIdentityOut `json:",omitempty"`
	NodeIdentities    []nodeIdentityOut    `json:",omitempty"`
	CreateIndex       uint64
	ModifyIndex       uint64
}

// parseServiceIdentities reads Consul's -service-identity NAME[:DC1,DC2].
func parseServiceIdentities(flagName string, vs []string) ([]serviceIdentityOut, error) {
	var out []serviceIdentityOut
	for _, v := range vs {
		name, dcs, hasDCs := strings.Cut(v, ":")
		if name == "" || strings.Contains(dcs, ":") || hasDCs && dcs == "" {
			return nil, usageError{fmt.Sprintf("-%s %q: want NAME or NAME:DC1,DC2", flagName, v)}
		}
		si := serviceIdentityOut{ServiceName: name}
		if hasDCs {
			si.Datacenters = strings.Split(dcs, ",")
		}
		out = append(out, si)
	}
	return out, nil
}

// parseNodeIdentities reads Consul's -node-identity NODE:DC.
func parseNodeIdentities(flagName string, vs []string) ([]nodeIdentityOut, error) {
	var out []nodeIdentityOut
	for _, v := range vs {
		node, dc, ok := strings.Cut(v, ":")
		if !ok || node == "" || dc == "" || strings.Contains(dc, ":") {
			return nil, usageError{fmt.Sprintf("-%s %q: want NODE:DATACENTER", flagName, v)}
		}
		out = append(out, nodeIdentityOut{NodeName: node, Datacenter: dc})
	}
	return out, nil
}

// linksOf makes links of IDs and names, as the flags give them.
func linksOf(ids, names []string) []aclLinkOut {
	var out []aclLinkOut
	for _, id := range ids {
		out = append(out, aclLinkOut{ID: id})
	}
	for _, n := range names {
		out = append(out, aclLinkOut{Name: n})
	}
	return out
}

// grantFlags are the flags of what a role or token gets.
type grantFlags struct {
	policyIDs, policyNames, services, nodes stringList
}

func (g *grantFlags) register(fs *flag.FlagSet, what string) {
	fs.Var(&g.policyIDs, "policy-id", "the ID of a policy the "+what+" gets (repeatable)")
	fs.Var(&g.policyNames, "policy-name", "the name of a policy the "+what+" gets (repeatable)")
	fs.Var(&g.services, "service-identity", "a service identity, NAME or NAME:DC1,DC2 (repeatable)")
	fs.Var(&g.nodes, "node-identity", "a node identity, NODE:DATACENTER (repeatable)")
}

func (g *grantFlags) parse() (policies []aclLinkOut, svcs []serviceIdentityOut, nodes []nodeIdentityOut, err error) {
	if svcs, err = parseServiceIdentities("service-identity", g.services); err != nil {
		return
	}
	if nodes, err = parseNodeIdentities("node-identity", g.nodes); err != nil {
		return
	}
	return linksOf(g.policyIDs, g.policyNames), svcs, nodes, nil
}

func aclRoleCreate(args []string, stdout, stderr io.Writer) error {
	var name, desc string
	var gf grantFlags
	_, c, cf, err := apiCommand("acl role create", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&name, "name", "", "the new role's name (required)")
		fs.StringVar(&desc, "description", "", "a description of the role")
		gf.register(fs, "role")
	})
	if err != nil {
		return err
	}
	if name == "" {
		return usageError{"-name is required"}
	}
	in := aclRoleOut{Name: name, Description: desc}
	if in.Policies, in.ServiceIdentities, in.NodeIdentities, err = gf.parse(); err != nil {
		return err
	}
	var out aclRoleOut
	if err := c.do("PUT", "/v1/acl/role", in, &out); err != nil {
		return err
	}
	return showRole(stdout, cf, &out)
}

func aclRoleRead(args []string, stdout, stderr io.Writer) error {
	_, cf, r, err := readACL[aclRoleOut]("role", "acl role read", args, stderr, nil)
	if err != nil {
		return err
	}
	return showRole(stdout, cf, r)
}

func aclRoleDelete(args []string, stdout, stderr io.Writer) error {
	c, _, r, err := readACL[aclRoleOut]("role", "acl role delete", args, stderr, nil)
	if err != nil {
		return err
	}
	return aclDelete(c, stdout, "role", r.ID)
}

// aclRoleUpdate is consul acl role update: the policies and identities
// given are added to the role's, or with -no-merge replace everything
// (name and description included).
func aclRoleUpdate(args []string, stdout, stderr io.Writer) error {
	var name, desc string
	var noMerge bool
	var gf grantFlags
	c, cf, r, err := readACL[aclRoleOut]("role", "acl role update", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&name, "name", "", "a new name")
		fs.StringVar(&desc, "description", "", "a new description")
		fs.BoolVar(&noMerge, "no-merge", false, "replace the role's name, description, policies and identities instead of adding to them")
		gf.register(fs, "role")
	})
	if err != nil {
		return err
	}
	policies, svcs, nodes, err := gf.parse()
	if err != nil {
		return err
	}
	if noMerge {
		if name == "" {
			return usageError{"-no-merge needs -name: the role is written anew"}
		}
		*r = aclRoleOut{ID: r.ID, Name: name, Description: desc, Policies: policies, ServiceIdentities: svcs, NodeIdentities: nodes}
	} else {
		if name != "" {
			r.Name = name
		}
		if desc != "" {
			r.Description = desc
		}
		r.Policies = mergeLinks(r.Policies, policies)
		for _, si := range svcs {
			i := slices.IndexFunc(r.ServiceIdentities, func(o serviceIdentityOut) bool { return o.ServiceName == si.ServiceName })
			if i < 0 {
				r.ServiceIdentities = append(r.ServiceIdentities, si)
			} else {
				r.ServiceIdentities[i] = si
			}
		}
		for _, ni := range nodes {
			if !slices.Contains(r.NodeIdentities, ni) {
				r.NodeIdentities = append(r.NodeIdentities, ni)
			}
		}
	}
	path := "/v1/acl/role/" + url.PathEscape(r.ID)
	if err := c.do("PUT", path, r, r); err != nil {
		return err
	}
	return showRole(stdout, cf, r)
}

// mergeLinks adds links not there yet (by ID or by name).
func mergeLinks(have, add []aclLinkOut) []aclLinkOut {
	for _, l := range add {
		if !slices.ContainsFunc(have, func(o aclLinkOut) bool { return l.ID != "" && o.ID == l.ID || l.Name != "" && o.Name == l.Name }) {
			have = append(have, l)
		}
	}
	return have
}

func aclRoleList(args []string, stdout, stderr io.Writer) error {
	return listCommand("acl role list", "/v1/acl/roles", args, stdout, stderr, func(rs []aclRoleOut) error {
		for _, r := range rs {
			fmt.Fprintf(stdout, "%s:\n   ID:           %s\n   Description:  %s\n", r.Name, r.ID, r.Description)
			writeGrant(stdout, "   ", nil, r.Policies, r.ServiceIdentities, r.NodeIdentities)
		}
		return nil
	})
}

func showRole(w io.Writer, cf *clientFlags, r *aclRoleOut) error {
	if cf.format == "json" {
		return printJSON(w, r)
	}
	fmt.Fprintf(w, "ID:           %s\nName:         %s\nDescription:  %s\n", r.ID, r.Name, r.Description)
	writeGrant(w, "", nil, r.Policies, r.ServiceIdentities, r.NodeIdentities)
	return nil
}

// writeGrant prints the sections Consul prints for what a role or token
// has, each only when it is not empty.
func writeGrant(w io.Writer, indent string, roles, policies []aclLinkOut, svcs []serviceIdentityOut, nodes []nodeIdentityOut) {
	for _, sec := range []struct {
		title string
		links []aclLinkOut
	}{{"Policies", policies}, {"Roles", roles}} {
		if len(sec.links) > 0 {
			fmt.Fprintf(w, "%s%s:\n", indent, sec.title)
			for _, l := range sec.links {
				fmt.Fprintf(w, "%s   %s - %s\n", indent, l.ID, l.Name)
			}
		}
	}
	if len(svcs) > 0 {
		fmt.Fprintf(w, "%sService Identities:\n", indent)
		for _, si := range svcs {
			dcs := "all"
			if len(si.Datacenters) > 0 {
				dcs = strings.Join(si.Datacenters, ", ")
			}
			fmt.Fprintf(w, "%s   %s (Datacenters: %s)\n", indent, si.ServiceName, dcs)
		}
	}
	if len(nodes) > 0 {
		fmt.Fprintf(w, "%sNode Identities:\n", indent)
		for _, ni := range nodes {
			fmt.Fprintf(w, "%s   %s (Datacenter: %s)\n", indent, ni.NodeName, ni.Datacenter)
		}
	}
}
