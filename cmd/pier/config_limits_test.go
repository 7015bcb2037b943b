package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigLimits reads the limits stanza: http_max_conns_per_client
// defaults to Consul's 200, is set from the file, and a negative value or
// a misspelt key stops the agent.
func TestConfigLimits(t *testing.T) {
	dir := t.TempDir()
	load := func(body string) (agentConfig, error) {
		p := filepath.Join(dir, "limits.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c := defaultAgentConfig()
		err := c.loadFile(p)
		return c, err
	}
	if c := defaultAgentConfig(); c.HTTPMaxConnsPerClient != 200 {
		t.Errorf("default http_max_conns_per_client = %d, want 200", c.HTTPMaxConnsPerClient)
	}
	for body, want := range map[string]int{
		"limits:\n  http_max_conns_per_client: 50\n":                    50,
		`{"limits": {"http_max_conns_per_client": 0}}`:                  0,
		"limits:\n  kv_max_store_bytes: 1000\n":                         200,
		"limits: {http_max_conns_per_client: 7, kv_max_store_bytes: 9}": 7,
	} {
		if c, err := load(body); err != nil {
			t.Errorf("%q: %v", body, err)
		} else if c.HTTPMaxConnsPerClient != want {
			t.Errorf("%q: http_max_conns_per_client = %d, want %d", body, c.HTTPMaxConnsPerClient, want)
		}
	}
	for body, want := range map[string]string{
		"limits:\n  http_max_conns_per_client: -1\n": "must not be negative",
		"limits:\n  http_max_conn_per_client: 10\n":  "unknown key",
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one saying %q", body, err, want)
		}
	}
}
