package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
)

// runKeyring rotates the gossip key of every datacenter, as consul keyring:
// -install a new key everywhere, -use it, then -remove the old one.
func runKeyring(args []string, stdout, stderr io.Writer) error {
	var list, listPrimary, localOnly bool
	var install, use, remove string
	fs, c, cf, err := apiCommand("keyring", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&list, "list", false, "list the keys of every node")
		fs.BoolVar(&listPrimary, "list-primary", false, "list the primary keys in use, per pool (the key each node encrypts with)")
		fs.StringVar(&install, "install", "", "install a key on every node (it decrypts; the primary still encrypts)")
		fs.StringVar(&use, "use", "", "make an installed key the primary on every node")
		fs.StringVar(&remove, "remove", "", "remove a key from every node (not the primary)")
		fs.BoolVar(&localOnly, "local-only", false, "with -list: this datacenter's agents only, not the WAN pool and the other datacenters")
	})
	if err != nil {
		return err
	}
	ops := 0
	for _, set := range []bool{list, listPrimary, install != "", use != "", remove != ""} {
		if set {
			ops++
		}
	}
	if ops != 1 || fs.NArg() > 0 {
		return usageError{"give exactly one of -list, -list-primary, -install KEY, -use KEY, -remove KEY"}
	}
	if localOnly && !list {
		return usageError{"-local-only can only be set with -list"}
	}
	switch {
	case install != "":
		err = c.do("POST", "/v1/operator/keyring", map[string]string{"Key": install}, nil)
	case use != "":
		err = c.do("PUT", "/v1/operator/keyring", map[string]string{"Key": use}, nil)
	case remove != "":
		err = c.do("DELETE", "/v1/operator/keyring", map[string]string{"Key": remove}, nil)
	}
	if err != nil {
		return err
	}
	if !list && !listPrimary {
		fmt.Fprintln(stdout, "Success! The keyring of every node is updated.")
		return nil
	}
	path := "/v1/operator/keyring"
	if localOnly {
		path += "?local-only=1"
	}
	var rs []struct {
		WAN         bool
		Datacenter  string
		Keys        map[string]int
		PrimaryKeys map[string]int
		NumNodes    int
		Messages    map[string]string
	}
	if err := c.do("GET", path, nil, &rs); err != nil {
		return err
	}
	if cf.format == "json" {
		return printJSON(stdout, rs)
	}
	for _, r := range rs {
		if r.WAN {
			fmt.Fprintln(stdout, "WAN:")
		} else {
			fmt.Fprintf(stdout, "%s (LAN):\n", r.Datacenter)
		}
		for _, k := range slices.Sorted(maps.Keys(r.Keys)) {
			if listPrimary {
				// consul keyring -list-primary's lines: each primary key
				// and how many nodes encrypt with it.
				if r.PrimaryKeys[k] > 0 {
					fmt.Fprintf(stdout, "  %s [%d/%d]\n", k, r.PrimaryKeys[k], r.NumNodes)
				}
				continue
			}
			primary := ""
			if r.PrimaryKeys[k] > 0 {
				primary = fmt.Sprintf(" (primary on %d)", r.PrimaryKeys[k])
			}
			fmt.Fprintf(stdout, "  %s [%d/%d]%s\n", k, r.Keys[k], r.NumNodes, primary)
		}
		for _, node := range slices.Sorted(maps.Keys(r.Messages)) {
			fmt.Fprintf(stdout, "  %s: %s\n", node, r.Messages[node])
		}
	}
	return nil
}
