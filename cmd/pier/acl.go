package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// The acl command is Consul's `consul acl policy|token` over /v1/acl, with
// the same flags and the same plain output, so that scripts written for
// Consul's CLI keep working.

type aclLinkOut struct {
	ID   string
	Name string
}

type aclPolicyOut struct {
	ID          string
	Name        string
	Description string
	Rules       string
	Datacenters []string
	CreateIndex uint64
	ModifyIndex uint64
}

type aclTokenOut struct {
	AccessorID        string
	SecretID          string
	Description       string
	Policies          []aclLinkOut
	Roles             []aclLinkOut         `json:",omitempty"`
	ServiceIdentities []serviceIdentityOut `json:",omitempty"`
	NodeIdentities    []nodeIdentityOut    `json:",omitempty"`
	Local             bool
	CreateTime        time.Time
	CreateIndex       uint64
	ModifyIndex       uint64
}

func runACL(args []string, stdout, stderr io.Writer) error {
	const want = "give a subcommand: policy, role or token, then create, list, read, update or delete (policy: no update)"
	if len(args) < 2 {
		return usageError{want}
	}
	kind, sub, args := args[0], args[1], args[2:]
	switch kind + " " + sub {
	case "policy create":
		return aclPolicyCreate(args, stdout, stderr)
	case "policy list":
		return aclList(args, stdout, stderr, "policy")
	case "policy read":
		return aclPolicyRead(args, stdout, stderr)
	case "policy delete":
		return aclPolicyDelete(args, stdout, stderr)
	case "role create":
		return aclRoleCreate(args, stdout, stderr)
	case "role list":
		return aclRoleList(args, stdout, stderr)
	case "role read":
		return aclRoleRead(args, stdout, stderr)
	case "role update":
		return aclRoleUpdate(args, stdout, stderr)
	case "role delete":
		return aclRoleDelete(args, stdout, stderr)
	case "token create":
		return aclTokenCreate(args, stdout, stderr)
	case "token list":
		return aclList(args, stdout, stderr, "token")
	case "token read":
		return aclTokenRead(args, stdout, stderr)
	case "token update":
		return aclTokenUpdate(args, stdout, stderr)
	case "token delete":
		return aclTokenDelete(args, stdout, stderr)
	}
	return usageError{fmt.Sprintf("unknown acl subcommand %q: %s", kind+" "+sub, want)}
}

// readArg is Consul's convention for values that may be long: @file reads
// a file, - reads standard input, anything else is the value itself. An
// error names the flag, if the value came from one.
func readArg(flagName, v string) (string, error) {
	switch {
	case v == "-":
		b, err := io.ReadAll(os.Stdin)
		return string(b), err
	case strings.HasPrefix(v, "@"):
		b, err := os.ReadFile(v[1:])
		if err != nil && flagName != "" {
			err = fmt.Errorf("-%s: %w", flagName, err)
		}
		return string(b), err
	}
	return v, nil
}

func aclPolicyCreate(args []string, stdout, stderr io.Writer) error {
	var name, desc, rules string
	var dcs stringList
	_, c, cf, err := apiCommand("acl policy create", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&name, "name", "", "the new policy's name (required)")
		fs.StringVar(&desc, "description", "", "a description of the policy")
		fs.StringVar(&rules, "rules", "", "the policy's rules, in Consul's rule language; @file reads a file, - standard input")
		fs.Var(&dcs, "valid-datacenter", "a datacenter the policy is valid in (repeatable)")
	})
	if err != nil {
		return err
	}
	if name == "" {
		return usageError{"-name is required"}
	}
	if rules, err = readArg("rules", rules); err != nil {
		return err
	}
	var p aclPolicyOut
	body := map[string]any{"Name": name, "Description": desc, "Rules": rules, "Datacenters": []string(dcs)}
	if err := c.do("PUT", "/v1/acl/policy", body, &p); err != nil {
		return err
	}
	return showPolicy(stdout, cf, &p)
}

// policyRef reads -id or -name, exactly one of them.
func policyRef(id, name string) (string, error) {
	switch {
	case id != "" && name != "":
		return "", usageError{"give -id or -name, not both"}
	case id != "":
		return "/v1/acl/policy/" + url.PathEscape(id), nil
	case name != "":
		return "/v1/acl/policy/name/" + url.PathEscape(name), nil
	}
	return "", usageError{"give the policy's -id or -name"}
}

// readPolicy parses -id or -name and reads that policy.
func readPolicy(cmd string, args []string, stderr io.Writer) (*client, *clientFlags, *aclPolicyOut, error) {
	var id, name string
	_, c, cf, err := apiCommand(cmd, args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&id, "id", "", "the policy's ID")
		fs.StringVar(&name, "name", "", "the policy's name")
	})
	if err != nil {
		return nil, nil, nil, err
	}
	path, err := policyRef(id, name)
	if err != nil {
		return nil, nil, nil, err
	}
	var p aclPolicyOut
	if err := c.do("GET", path, nil, &p); err != nil {
		return nil, nil, nil, notFound(err, "policy", id+name)
	}
	return c, cf, &p, nil
}

func aclPolicyRead(args []string, stdout, stderr io.Writer) error {
	_, cf, p, err := readPolicy("acl policy read", args, stderr)
	if err != nil {
		return err
	}
	return showPolicy(stdout, cf, p)
}

// aclPolicyDelete reads the policy first: deleting takes its ID, and -name
// must name one.
func aclPolicyDelete(args []string, stdout, stderr io.Writer) error {
	c, _, p, err := readPolicy("acl policy delete", args, stderr)
	if err != nil {
		return err
	}
	if err := c.do("DELETE", "/v1/acl/policy/"+url.PathEscape(p.ID), nil, nil); err != nil {
		return notFound(err, "policy", p.ID)
	}
	fmt.Fprintf(stdout, "Policy %q deleted successfully\n", p.ID)
	return nil
}

func aclTokenCreate(args []string, stdout, stderr io.Writer) error {
	var desc, secret, accessor string
	var local bool
	var gf grantFlags
	var roleIDs, roleNames stringList
	_, c, cf, err := apiCommand("acl token create", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&desc, "description", "", "a description of the token")
		gf.register(fs, "token")
		fs.Var(&roleIDs, "role-id", "the ID of a role the token gets (repeatable)")
		fs.Var(&roleNames, "role-name", "the name of a role the token gets (repeatable)")
		fs.StringVar(&secret, "secret", "", "the token's secret (a UUID; default: a new one)")
		fs.StringVar(&accessor, "accessor", "", "the token's accessor ID (a UUID; default: a new one)")
		fs.BoolVar(&local, "local", false, "accepted for Consul's sake: pier has one datacenter")
	})
	if err != nil {
		return err
	}
	in := aclTokenOut{Description: desc, SecretID: secret, AccessorID: accessor, Local: local, Roles: linksOf(roleIDs, roleNames)}
	if in.Policies, in.ServiceIdentities, in.NodeIdentities, err = gf.parse(); err != nil {
		return err
	}
	var t aclTokenOut
	if err := c.do("PUT", "/v1/acl/token", tokenBody(&in), &t); err != nil {
		return err
	}
	return showToken(stdout, cf, &t)
}

// tokenBody is what a token write sends: no empty secret or accessor (the
// agent makes them), no indexes or times.
func tokenBody(t *aclTokenOut) map[string]any {
	b := map[string]any{"Description": t.Description, "Policies": t.Policies, "Roles": t.Roles,
		"ServiceIdentities": t.ServiceIdentities, "NodeIdentities": t.NodeIdentities, "Local": t.Local}
	if t.AccessorID != "" {
		b["AccessorID"] = t.AccessorID
	}
	if t.SecretID != "" {
		b["SecretID"] = t.SecretID
	}
	return b
}

// tokenFlags defines -accessor-id, Consul's older -id for it, and -self.
func tokenFlags(fs *flag.FlagSet, id *string, self *bool) {
	fs.StringVar(id, "accessor-id", "", "the token's accessor ID")
	fs.StringVar(id, "id", "", "the token's accessor ID (Consul's older name for -accessor-id)")
	if self != nil {
		fs.BoolVar(self, "self", false, "read the token the command is given (-token or $PIER_HTTP_TOKEN)")
	}
}

func aclTokenRead(args []string, stdout, stderr io.Writer) error {
	var id string
	var self bool
	_, c, cf, err := apiCommand("acl token read", args, stderr, func(fs *flag.FlagSet) { tokenFlags(fs, &id, &self) })
	if err != nil {
		return err
	}
	path := "/v1/acl/token/self"
	switch {
	case id != "" && self:
		return usageError{"give -accessor-id or -self, not both"}
	case id != "":
		path = "/v1/acl/token/" + url.PathEscape(id)
	case !self:
		return usageError{"give the token's -accessor-id, or -self"}
	}
	var t aclTokenOut
	if err := c.do("GET", path, nil, &t); err != nil {
		return notFound(err, "token", id)
	}
	return showToken(stdout, cf, &t)
}

// aclTokenUpdate is consul acl token update: for policies, roles, service
// and node identities, -X sets the token's, -append-X adds to them, and
// neither keeps them; -description replaces the description when given.
func aclTokenUpdate(args []string, stdout, stderr io.Writer) error {
	var id, desc string
	var set, add grantFlags
	var roleIDs, roleNames, addRoleIDs, addRoleNames stringList
	_, c, cf, err := apiCommand("acl token update", args, stderr, func(fs *flag.FlagSet) {
		tokenFlags(fs, &id, nil)
		fs.StringVar(&desc, "description", "", "a new description")
		set.register(fs, "token instead of its own")
		fs.Var(&roleIDs, "role-id", "the ID of a role the token gets instead of its own (repeatable)")
		fs.Var(&roleNames, "role-name", "the name of a role the token gets instead of its own (repeatable)")
		fs.Var(&add.policyIDs, "append-policy-id", "the ID of a policy added to the token's (repeatable)")
		fs.Var(&add.policyNames, "append-policy-name", "the name of a policy added to the token's (repeatable)")
		fs.Var(&addRoleIDs, "append-role-id", "the ID of a role added to the token's (repeatable)")
		fs.Var(&addRoleNames, "append-role-name", "the name of a role added to the token's (repeatable)")
		fs.Var(&add.services, "append-service-identity", "a service identity added to the token's (repeatable)")
		fs.Var(&add.nodes, "append-node-identity", "a node identity added to the token's (repeatable)")
	})
	if err != nil {
		return err
	}
	if id == "" {
		return usageError{"give the token's -accessor-id"}
	}
	for _, k := range []struct {
		name     string
		set, add int
	}{
		{"policy", len(set.policyIDs) + len(set.policyNames), len(add.policyIDs) + len(add.policyNames)},
		{"role", len(roleIDs) + len(roleNames), len(addRoleIDs) + len(addRoleNames)},
		{"service-identity", len(set.services), len(add.services)},
		{"node-identity", len(set.nodes), len(add.nodes)},
	} {
		if k.set > 0 && k.add > 0 {
			return usageError{fmt.Sprintf("-%[1]s flags set the token's, -append-%[1]s flags add to them: not both", k.name)}
		}
	}
	setP, setS, setN, err := set.parse()
	if err != nil {
		return err
	}
	addP, addS, addN, err := add.parse()
	if err != nil {
		return err
	}
	path := "/v1/acl/token/" + url.PathEscape(id)
	var t aclTokenOut
	if err := c.do("GET", path, nil, &t); err != nil {
		return notFound(err, "token", id)
	}
	t.Policies = replaceOrAppend(t.Policies, setP, addP)
	t.Roles = replaceOrAppend(t.Roles, linksOf(roleIDs, roleNames), linksOf(addRoleIDs, addRoleNames))
	t.ServiceIdentities = replaceOrAppend(t.ServiceIdentities, setS, addS)
	t.NodeIdentities = replaceOrAppend(t.NodeIdentities, setN, addN)
	if desc != "" {
		t.Description = desc
	}
	body := tokenBody(&t)
	delete(body, "SecretID") // a secret never changes; the agent refuses a different one
	if err := c.do("PUT", path, body, &t); err != nil {
		return err
	}
	return showToken(stdout, cf, &t)
}

// replaceOrAppend: set replaces have when given, else add is appended.
func replaceOrAppend[T any](have, set, add []T) []T {
	if len(set) > 0 {
		return set
	}
	return append(have, add...)
}

func aclTokenDelete(args []string, stdout, stderr io.Writer) error {
	var id string
	_, c, _, err := apiCommand("acl token delete", args, stderr, func(fs *flag.FlagSet) { tokenFlags(fs, &id, nil) })
	if err != nil {
		return err
	}
	if id == "" {
		return usageError{"give the token's -accessor-id"}
	}
	if err := c.do("DELETE", "/v1/acl/token/"+url.PathEscape(id), nil, nil); err != nil {
		return notFound(err, "token", id)
	}
	fmt.Fprintf(stdout, "Token %q deleted successfully\n", id)
	return nil
}

func aclList(args []string, stdout, stderr io.Writer, kind string) error {
	_, c, cf, err := apiCommand("acl "+kind+" list", args, stderr, nil)
	if err != nil {
		return err
	}
	if kind == "policy" {
		var ps []aclPolicyOut
		if err := c.do("GET", "/v1/acl/policies", nil, &ps); err != nil {
			return err
		}
		if cf.format == "json" {
			return printJSON(stdout, ps)
		}
		for _, p := range ps {
			fmt.Fprintf(stdout, "%s:\n   ID:           %s\n   Description:  %s\n   Datacenters:  %s\n",
				p.Name, p.ID, p.Description, strings.Join(p.Datacenters, ", "))
		}
		return nil
	}
	var ts []aclTokenOut
	if err := c.do("GET", "/v1/acl/tokens", nil, &ts); err != nil {
		return err
	}
	if cf.format == "json" {
		return printJSON(stdout, ts)
	}
	for i := range ts {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		showToken(stdout, cf, &ts[i])
	}
	return nil
}

func showPolicy(w io.Writer, cf *clientFlags, p *aclPolicyOut) error {
	if cf.format == "json" {
		return printJSON(w, p)
	}
	fmt.Fprintf(w, "ID:           %s\nName:         %s\nDescription:  %s\nDatacenters:  %s\nRules:\n%s\n",
		p.ID, p.Name, p.Description, strings.Join(p.Datacenters, ", "), p.Rules)
	return nil
}

func showToken(w io.Writer, cf *clientFlags, t *aclTokenOut) error {
	if cf.format == "json" {
		return printJSON(w, t)
	}
	created := "" // tokens from the config file have no creation time
	if !t.CreateTime.IsZero() {
		created = t.CreateTime.Local().Format("2006-01-02 15:04:05.999999999 -0700 MST")
	}
	fmt.Fprintf(w, "AccessorID:       %s\nSecretID:         %s\nDescription:      %s\nLocal:            %t\nCreate Time:      %s\nPolicies:\n",
		t.AccessorID, t.SecretID, t.Description, t.Local, created)
	for _, l := range t.Policies {
		fmt.Fprintf(w, "   %s - %s\n", l.ID, l.Name)
	}
	writeGrant(w, "", t.Roles, nil, t.ServiceIdentities, t.NodeIdentities)
	return nil
}

// notFound turns the agent's 404 (or Consul's 403 for an unknown token)
// into a line that names what was asked for.
func notFound(err error, kind, ref string) error {
	var ae *apiError
	if errors.As(err, &ae) && ref != "" && (ae.Code == http.StatusNotFound ||
		ae.Code == http.StatusForbidden && strings.Contains(ae.Msg, "not found")) {
		return fmt.Errorf("no %s %q: %s", kind, ref, ae.Msg)
	}
	return err
}
