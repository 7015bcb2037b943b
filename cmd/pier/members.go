package main

import (
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strconv"
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
	path := "/v1/agent/members"
	if slices.Contains(args, "-wan") || slices.Contains(args, "--wan") {
		// The WAN pool's servers (node.dc), as consul members -wan.
		args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "-wan" || a == "--wan" })
		path += "?wan=1"
	}
	return listCommand("members", path, args, stdout, stderr, func(ms []apiMember) error {
		sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
		tw := newTable(stdout, "Node\tAddress\tStatus\tTags")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)), memberStatus(m.Status), pairs(m.Tags, ","))
		}
		return tw.Flush()
	})
}
