package main

import (
	"fmt"
	"io"
)

func runLeave(args []string, stdout, stderr io.Writer) error {
	_, c, _, err := apiCommand("leave", args, stderr, nil)
	if err != nil {
		return err
	}
	if err := c.do("PUT", "/v1/agent/leave", nil, nil); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Graceful leave complete")
	return nil
}
