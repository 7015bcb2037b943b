package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strings"
)

// runMaint is `consul maint`: without -enable or -disable it lists what is
// in maintenance; with -service it acts on one service, otherwise on the
// whole node.
func runMaint(args []string, stdout, stderr io.Writer) error {
	var (
		enable, disable bool
		reason, service string
	)
	fs, cf, err := apiFlags("maint", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&enable, "enable", false, "enable maintenance mode (the service's or node's instances leave every healthy answer)")
		fs.BoolVar(&disable, "disable", false, "disable maintenance mode")
		fs.StringVar(&reason, "reason", "", "why (shown in the maintenance check's Notes); only with -enable")
		fs.StringVar(&service, "service", "", "ID of the service to act on (default: the whole node)")
	})
	if err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	case enable && disable:
		return usageError{"only one of -enable or -disable may be given"}
	case reason != "" && !enable:
		return usageError{"-reason may only be given with -enable"}
	case service != "" && !enable && !disable:
		return usageError{"-service needs -enable or -disable"}
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if !enable && !disable {
		return listMaintenance(c, stdout)
	}
	q := url.Values{"enable": {fmt.Sprint(enable)}}
	if reason != "" {
		q.Set("reason", reason)
	}
	path := "/v1/agent/maintenance?" + q.Encode()
	if service != "" {
		path = "/v1/agent/service/maintenance/" + url.PathEscape(service) + "?" + q.Encode()
	}
	if err := c.do("PUT", path, nil, nil); err != nil {
		return err
	}
	state := "disabled"
	if enable {
		state = "enabled"
	}
	if service != "" {
		fmt.Fprintf(stdout, "Service maintenance is now %s for %q\n", state, service)
	} else {
		fmt.Fprintf(stdout, "Node maintenance is now %s\n", state)
	}
	return nil
}

// listMaintenance prints the node and services in maintenance, in `consul
// maint`'s layout.
func listMaintenance(c *client, stdout io.Writer) error {
	var checks map[string]struct {
		Node, CheckID, ServiceID, Notes string
	}
	if err := c.do("GET", "/v1/agent/checks", nil, &checks); err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(checks)) {
		ch := checks[id]
		switch {
		case id == "_node_maintenance":
			fmt.Fprintf(stdout, "Node:\n  Name:   %s\n  Reason: %s\n\n", ch.Node, ch.Notes)
		case strings.HasPrefix(id, "_service_maintenance:"):
			fmt.Fprintf(stdout, "Service:\n  ID:     %s\n  Reason: %s\n\n", ch.ServiceID, ch.Notes)
		}
	}
	return nil
}
