package main

import (
	"flag"
	"fmt"
	"io"
	"net/url"
)

func runJoin(args []string, stdout, stderr io.Writer) error {
	var wan bool
	fs, c, _, err := apiCommand("join", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&wan, "wan", false, "join servers of other datacenters in the WAN pool (the agent must be a server)")
	})
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"give the address of at least one agent to join (host or host:port)"}
	}
	joined := 0
	for _, addr := range fs.Args() {
		path := "/v1/agent/join/" + url.PathEscape(addr)
		if wan {
			path += "?wan=1"
		}
		if err := c.do("PUT", path, nil, nil); err != nil {
			fmt.Fprintf(stderr, "pier join: %s: %v\n", addr, err)
			continue
		}
		joined++
	}
	if joined == 0 {
		return fmt.Errorf("could not join any of %v", fs.Args())
	}
	fmt.Fprintf(stdout, "Successfully joined cluster by contacting %d nodes.\n", joined)
	return nil
}
