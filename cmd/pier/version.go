package main

import (
	"fmt"
	"io"
)

func runVersion(args []string, stdout, stderr io.Writer) error {
	_, c, cf, err := apiCommand("version", args, stderr, nil)
	if err != nil {
		return err
	}
	var self struct {
		Config struct {
			NodeName string
			Version  string
		}
	}
	agentErr := c.do("GET", "/v1/agent/self", nil, &self)
	if cf.format == "json" {
		out := map[string]string{"Version": version}
		if agentErr == nil {
			out["AgentVersion"] = self.Config.Version
			out["AgentNode"] = self.Config.NodeName
		}
		return printJSON(stdout, out)
	}
	fmt.Fprintf(stdout, "pier %s\n", version)
	// The local version is useful on its own; an agent that does not answer
	// is reported, not an error.
	if agentErr != nil {
		fmt.Fprintf(stdout, "agent: not reachable (%v)\n", agentErr)
		return nil
	}
	fmt.Fprintf(stdout, "agent: pier %s on node %s at %s\n", self.Config.Version, self.Config.NodeName, c.base)
	return nil
}
