package main

import (
	"fmt"
	"io"
	"net/url"
)

func runJoin(args []string, stdout, stderr io.Writer) error {
	fs, c, _, err := apiCommand("join", args, stderr, nil)
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"give the address of at least one agent to join (host or host:port)"}
	}
	joined := 0
	for _, addr := range fs.Args() {
		if err := c.do("PUT", "/v1/agent/join/"+url.PathEscape(addr), nil, nil); err != nil {
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
