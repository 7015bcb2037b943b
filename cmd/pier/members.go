package main

import (
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

type apiMember struct {
	Name   string
	Addr   string
	Port   int
	Tags   map[string]string
	Status int
}

// memberStatus names Serf's status numbers as consul members prints them.
func memberStatus(s int) string {
	switch s {
	case 1:
		return "alive"
	case 2:
		return "leaving"
	case 3:
		return "left"
	case 4:
		return "failed"
	}
	return "none"
}

func runMembers(args []string, stdout, stderr io.Writer) error {
	_, c, cf, err := apiCommand("members", args, stderr, nil)
	if err != nil {
		return err
	}
	var ms []apiMember
	if err := c.do("GET", "/v1/agent/members", nil, &ms); err != nil {
		return err
	}
	if cf.format == "json" {
		return printJSON(stdout, ms)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "Node\tAddress\tStatus\tTags")
	for _, m := range ms {
		keys := make([]string, 0, len(m.Tags))
		for k := range m.Tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		tags := make([]string, 0, len(keys))
		for _, k := range keys {
			tags = append(tags, k+"="+m.Tags[k])
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)), memberStatus(m.Status), strings.Join(tags, ","))
	}
	return tw.Flush()
}
