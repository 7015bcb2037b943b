package main

import (
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// instance is the part of /v1/health/service/:name that pier services shows.
type instance struct {
	Node struct {
		Node    string
		Address string
	}
	Service struct {
		ID      string
		Service string
		Tags    []string
		Address string
		Port    int
	}
	Checks []struct {
		Status string
	}
}

// status is the worst of the instance's checks, as Consul aggregates.
func (in instance) status() string {
	st := "passing"
	for _, c := range in.Checks {
		switch {
		case c.Status == "critical" || c.Status == "maintenance":
			return "critical"
		case c.Status == "warning":
			st = "warning"
		}
	}
	return st
}

func runServices(args []string, stdout, stderr io.Writer) error {
	_, c, cf, err := apiCommand("services", args, stderr, nil)
	if err != nil {
		return err
	}
	var names map[string][]string
	if err := c.do("GET", "/v1/catalog/services", nil, &names); err != nil {
		return err
	}
	var all []instance
	for _, n := range slices.Sorted(maps.Keys(names)) {
		var ins []instance
		if err := c.do("GET", "/v1/health/service/"+url.PathEscape(n), nil, &ins); err != nil {
			return err
		}
		all = append(all, ins...)
	}
	if cf.format == "json" {
		if all == nil {
			all = []instance{}
		}
		return printJSON(stdout, all)
	}
	tw := newTable(stdout, "Name\tID\tNode\tAddress\tStatus\tTags")
	for _, in := range all {
		addr := in.Service.Address
		if addr == "" {
			addr = in.Node.Address
		}
		if in.Service.Port != 0 {
			addr += ":" + strconv.Itoa(in.Service.Port)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", in.Service.Service, in.Service.ID, in.Node.Node, addr, in.status(), strings.Join(in.Service.Tags, ","))
	}
	return tw.Flush()
}
