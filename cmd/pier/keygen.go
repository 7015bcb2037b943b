package main

import (
	"fmt"
	"io"

	"github.com/pier-dev/pier/registry/gossip"
)

func runKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keygen")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	fmt.Fprintln(stdout, gossip.NewKey())
	return nil
}
