package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDockerConfig: -docker and the docker: section, flags over the file,
// DOCKER_HOST under both, and bad values refused.
func TestDockerConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pier.yaml")
	os.WriteFile(file, []byte("docker:\n  endpoint: tcp://10.0.0.9:2375\n  resync: 30s\n  internal: true\n"), 0o600)
	empty := filepath.Join(dir, "empty.yaml")
	os.WriteFile(empty, []byte("docker: {}\n"), 0o600)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("docker:\n  resync: soon\n"), 0o600)
	t.Setenv("DOCKER_HOST", "unix:///run/user/docker.sock")

	resolve := func(args ...string) (agentConfig, error) {
		f := newAgentFlags()
		if err := f.fs.Parse(append([]string{"-dev"}, args...)); err != nil {
			return agentConfig{}, err
		}
		return f.resolve()
	}
	for _, tc := range []struct {
		args []string
		want *dockerSettings
	}{
		{nil, nil},
		{[]string{"-docker"}, &dockerSettings{Endpoint: "unix:///run/user/docker.sock"}},
		{[]string{"-docker-internal"}, &dockerSettings{Endpoint: "unix:///run/user/docker.sock", Internal: true}},
		{[]string{"-config-file", empty}, &dockerSettings{Endpoint: "unix:///run/user/docker.sock"}},
		{[]string{"-config-file", file}, &dockerSettings{Endpoint: "tcp://10.0.0.9:2375", Resync: 30 * time.Second, Internal: true}},
		{[]string{"-config-file", file, "-docker-endpoint", "unix:///x.sock", "-docker-resync", "5s", "-docker-internal=false"},
			&dockerSettings{Endpoint: "unix:///x.sock", Resync: 5 * time.Second}},
		{[]string{"-config-file", file, "-docker=false"}, nil},
		{[]string{"-docker-label", "pier.node=backend1"}, &dockerSettings{Endpoint: "unix:///run/user/docker.sock", Label: "pier.node=backend1"}},
	} {
		c, err := resolve(tc.args...)
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if (c.Docker == nil) != (tc.want == nil) || c.Docker != nil && *c.Docker != *tc.want {
			t.Errorf("%v: %+v, want %+v", tc.args, c.Docker, tc.want)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-docker-resync", "0s"}, "-docker-resync"},
		{[]string{"-config-file", bad}, "docker.resync"},
	} {
		if _, err := resolve(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
