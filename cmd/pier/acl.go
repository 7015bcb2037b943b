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

func runACL(args []string, stdout, stderr io.Writer) error {
	const want = "give a subcommand: bootstrap, or policy, role or token, then create, list, read, update or delete (policy: no update)"
	if len(args) > 0 && args[0] == "bootstrap" {
		return aclBootstrap(args[1:], stdout, stderr)
	}
	if len(args) < 2 {
		return usageError{want}
	}
	kind, sub, args := args[0], args[1], args[2:]
	switch kind + " " + sub {
	case "policy create":
		return aclPolicyCreate(args, stdout, stderr)
	case "policy list":
		return aclPolicyList(args, stdout, stderr)
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
		return aclTokenList(args, stdout, stderr)
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

// aclRef is the path of the policy or role (kind) that -id or -name
// names, exactly one of them.
func aclRef(kind, id, name string) (string, error) {
	switch {
	case id != "" && name != "":
		return "", usageError{"give -id or -name, not both"}
	case id != "":
		return "/v1/acl/" + kind + "/" + url.PathEscape(id), nil
	case name != "":
		return "/v1/acl/" + kind + "/name/" + url.PathEscape(name), nil
	}
	return "", usageError{"give the " + kind + "'s -id or -name"}
}

// readACL parses the flags of cmd and reads the policy or role (kind) that
// -id or -name names. update, if not nil, defines the flags of an update
// instead of -name (which is then the new name): only -id names the object,
// as in Consul.
func readACL[T any](kind, cmd string, args []string, stderr io.Writer, update func(*flag.FlagSet)) (*client, *clientFlags, *T, error) {
	var id, name string
	_, c, cf, err := apiCommand(cmd, args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&id, "id", "", "the "+kind+"'s ID")
		if update != nil {
			update(fs)
		} else {
			fs.StringVar(&name, "name", "", "the "+kind+"'s name")
		}
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if update != nil && id == "" {
		return nil, nil, nil, usageError{"give the " + kind + "'s -id"}
	}
	path, err := aclRef(kind, id, name)
	if err != nil {
		return nil, nil, nil, err
	}
	var v T
	if err := c.do("GET", path, nil, &v); err != nil {
		return nil, nil, nil, notFound(err, kind, id+name)
	}
	return c, cf, &v, nil
}

// aclDelete deletes the policy, role or token (kind) of id and says so, as
// Consul does.
func aclDelete(c *client, stdout io.Writer, kind, id string) error {
	if err := c.do("DELETE", "/v1/acl/"+kind+"/"+url.PathEscape(id), nil, nil); err != nil {
		return notFound(err, kind, id)
	}
	fmt.Fprintf(stdout, "%s%s %q deleted successfully\n", strings.ToUpper(kind[:1]), kind[1:], id)
	return nil
}

func aclPolicyRead(args []string, stdout, stderr io.Writer) error {
	_, cf, p, err := readACL[aclPolicyOut]("policy", "acl policy read", args, stderr, nil)
	if err != nil {
		return err
	}
	return showPolicy(stdout, cf, p)
}

// aclPolicyDelete reads the policy first: deleting takes its ID, and -name
// must name one.
func aclPolicyDelete(args []string, stdout, stderr io.Writer) error {
	c, _, p, err := readACL[aclPolicyOut]("policy", "acl policy delete", args, stderr, nil)
	if err != nil {
		return err
	}
	return aclDelete(c, stdout, "policy", p.ID)
}

func aclPolicyList(args []string, stdout, stderr io.Writer) error {
	return listCommand("acl policy list", "/v1/acl/policies", args, stdout, stderr, func(ps []aclPolicyOut) error {
		for _, p := range ps {
			fmt.Fprintf(stdout, "%s:\n   ID:           %s\n   Description:  %s\n   Datacenters:  %s\n",
				p.Name, p.ID, p.Description, strings.Join(p.Datacenters, ", "))
		}
		return nil
	})
}

func showPolicy(w io.Writer, cf *clientFlags, p *aclPolicyOut) error {
	if cf.format == "json" {
		return printJSON(w, p)
	}
	fmt.Fprintf(w, "ID:           %s\nName:         %s\nDescription:  %s\nDatacenters:  %s\nRules:\n%s\n",
		p.ID, p.Name, p.Description, strings.Join(p.Datacenters, ", "), p.Rules)
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
