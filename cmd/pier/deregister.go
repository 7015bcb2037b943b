package main

import (
	"fmt"
	"io"
	"net/url"
)

func runDeregister(args []string, stdout, stderr io.Writer) error {
	fs, c, _, err := apiCommand("deregister", args, stderr, nil)
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"give the ID of the service to deregister"}
	}
	for _, id := range fs.Args() {
		if err := c.do("PUT", "/v1/agent/service/deregister/"+url.PathEscape(id), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Deregistered service: %s\n", id)
	}
	return nil
}
