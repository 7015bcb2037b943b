package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// consul acl token: tokens link policies, roles and identities (the flags
// of which acl_role.go shares).

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
	return aclDelete(c, stdout, "token", id)
}

func aclTokenList(args []string, stdout, stderr io.Writer) error {
	return listCommand("acl token list", "/v1/acl/tokens", args, stdout, stderr, func(ts []aclTokenOut) error {
		for i := range ts {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			writeToken(stdout, &ts[i])
		}
		return nil
	})
}

func showToken(w io.Writer, cf *clientFlags, t *aclTokenOut) error {
	if cf.format == "json" {
		return printJSON(w, t)
	}
	writeToken(w, t)
	return nil
}

// writeToken prints a token as consul acl token read does.
func writeToken(w io.Writer, t *aclTokenOut) {
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
}

// aclBootstrap is `consul acl bootstrap [SECRET-FILE]`: the cluster's
// first management token, once; the optional argument (a file, or - for
// standard input) holds the secret to use.
func aclBootstrap(args []string, stdout, stderr io.Writer) error {
	fs, c, cf, err := apiCommand("acl bootstrap", args, stderr, nil)
	if err != nil {
		return err
	}
	body := map[string]any{}
	switch fs.NArg() {
	case 0:
	case 1:
		src := fs.Arg(0)
		if src != "-" {
			src = "@" + src
		}
		secret, err := readArg("", src)
		if err != nil {
			return fmt.Errorf("reading the provided token: %w", err)
		}
		body["BootstrapSecret"] = strings.TrimSpace(secret)
	default:
		return usageError{"acl bootstrap takes up to one argument: a file holding the secret, or - for standard input"}
	}
	var t aclTokenOut
	if err := c.do("PUT", "/v1/acl/bootstrap", body, &t); err != nil {
		return fmt.Errorf("Failed ACL bootstrapping: %w", err)
	}
	return showToken(stdout, cf, &t)
}
