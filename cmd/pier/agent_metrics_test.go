package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pier-dev/pier/proxy"
)

// resolveWith resolves the agent's flags args with a config file holding yaml.
func resolveWith(t *testing.T, yaml string, args ...string) (agentConfig, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "pier.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newAgentFlags()
	if err := f.fs.Parse(append([]string{"-dev", "-config-file", file}, args...)); err != nil {
		t.Fatal(err)
	}
	return f.resolve()
}

func TestMetricsAndAccessLogConfig(t *testing.T) {
	for _, tc := range []struct {
		yaml    string
		args    []string
		addr    string
		disable bool
		access  string
		err     string
	}{
		{yaml: "metrics_addr: 127.0.0.1:9100", addr: "127.0.0.1:9100"},
		{yaml: "telemetry: {metrics_addr: ':9100'}", addr: ":9100"},
		{yaml: "metrics_addr: 127.0.0.1:9100", args: []string{"-metrics-addr", "127.0.0.1:0"}, addr: "127.0.0.1:0"},
		{yaml: "telemetry: {disable: true}", disable: true},
		{yaml: "telemetry: {disable: true}", args: []string{"-metrics-addr", ":9100"}, err: "telemetry.disable"},
		{yaml: "metrics_addr: localhost:9100", err: "not an IP address"},
		{yaml: "metrics_addr: '9100'", err: "want host:port"},
		{yaml: "proxy: {access_log: json}", access: proxy.AccessLogJSON},
		{yaml: "proxy: {access_log: combined}", access: proxy.AccessLogCombined},
		{yaml: "proxy: {access_log: off}", access: proxy.AccessLogOff}, // YAML's off is a boolean
		{yaml: "proxy: {access_log: true}", access: proxy.AccessLogCombined},
		{yaml: "proxy: {access_log: common}", err: "want combined, json or off"},
	} {
		c, err := resolveWith(t, tc.yaml, tc.args...)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q %v: err %v, want %q", tc.yaml, tc.args, err, tc.err)
			}
			continue
		case err != nil:
			t.Errorf("%q %v: %v", tc.yaml, tc.args, err)
			continue
		}
		if c.Metrics.Addr != tc.addr || c.Metrics.Disable != tc.disable {
			t.Errorf("%q %v: metrics %+v", tc.yaml, tc.args, c.Metrics)
		}
		if tc.access != "" && (c.Proxy == nil || c.Proxy.proxy.AccessLog != tc.access) {
			t.Errorf("%q: access log %+v", tc.yaml, c.Proxy)
		}
	}
}
