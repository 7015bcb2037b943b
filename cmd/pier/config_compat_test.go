package main

import (
	"strings"
	"testing"
)

// TestSeedCommandLines: the talk's agent command lines, consul replaced by
// pier, are accepted as they are.
func TestSeedCommandLines(t *testing.T) {
	for _, line := range []string{
		"-server -bootstrap-expect 1 -data-dir /tmp/consul --client 0.0.0.0 -node helloworld",
		"-server -join 172.17.0.2 -data-dir /tmp/consul --client 0.0.0.0 -node helloworld2",
		"-dev -ui",
	} {
		f := newAgentFlags()
		if err := f.fs.Parse(strings.Fields(line)); err != nil {
			t.Errorf("pier agent %s: %v", line, err)
			continue
		}
		c, err := f.resolve()
		if err != nil {
			t.Errorf("pier agent %s: %v", line, err)
			continue
		}
		if want := f.fs.Lookup("node").Value.String(); want != "" && c.Node != want {
			t.Errorf("pier agent %s: node %q, want %q", line, c.Node, want)
		}
	}
}
