package main

import (
	"fmt"
	"io"
)

func runLeave(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("leave")
	var cf clientFlags
	cf.register(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if err := c.do("PUT", "/v1/agent/leave", nil, nil); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Graceful leave complete")
	return nil
}
