package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/pier-dev/pier/health"
	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/docker"
)

// dockerSettings turn on the registration of this node's containers
// (-docker or a docker: section); nil in agentConfig means off.
type dockerSettings struct {
	Endpoint string        // empty: DOCKER_HOST, else the engine's default socket
	Resync   time.Duration // how often every running container is listed again
	Internal bool          // register container IPs and exposed ports
	Label    string        // only containers with this label ("key" or "key=value")
}

// dockerFile is the config file's docker section.
type dockerFile struct {
	Endpoint *string
	Resync   *time.Duration
	Internal *bool
	Label    *string
}

// dockerFlags are the agent's Docker flags.
type dockerFlags struct {
	on       bool
	endpoint string
	resync   time.Duration
	internal bool
	label    string
}

func (f *agentFlags) addDockerFlags() {
	fs := f.fs
	fs.BoolVar(&f.docker.on, "docker", false, "register this host's Docker containers with published ports, as Registrator does (the agent then holds the Docker socket: root on this host)")
	fs.StringVar(&f.docker.endpoint, "docker-endpoint", "", "the Docker engine's API, unix:///path or tcp://host:port (default: DOCKER_HOST, else unix:///var/run/docker.sock); implies -docker")
	fs.DurationVar(&f.docker.resync, "docker-resync", 0, "how often every running container is listed again to repair missed events (default 60s); implies -docker")
	fs.BoolVar(&f.docker.internal, "docker-internal", false, "register each container's own IP and exposed port instead of this host's address and the published port; implies -docker")
	fs.StringVar(&f.docker.label, "docker-label", "", "register only containers with this label, key or key=value (for several agents sharing one engine, e.g. pier.node=backend1); implies -docker")
}

// mergeDocker applies a config file's docker section.
func (c *agentConfig) mergeDocker(df *dockerFile) error {
	if df == nil {
		return nil
	}
	if c.Docker == nil {
		c.Docker = &dockerSettings{}
	}
	if df.Endpoint != nil {
		c.Docker.Endpoint = *df.Endpoint
	}
	if df.Resync != nil {
		if *df.Resync == 0 {
			return fmt.Errorf("docker.resync: want a positive duration such as 60s")
		}
		c.Docker.Resync = *df.Resync
	}
	if df.Internal != nil {
		c.Docker.Internal = *df.Internal
	}
	if df.Label != nil {
		c.Docker.Label = *df.Label
	}
	return nil
}

// resolveDocker applies the Docker flags over the config files.
func (c *agentConfig) resolveDocker(f *agentFlags, set map[string]bool) error {
	if set["docker-endpoint"] || set["docker-resync"] || set["docker-internal"] || set["docker-label"] || set["docker"] && f.docker.on {
		if c.Docker == nil {
			c.Docker = &dockerSettings{}
		}
	}
	if set["docker"] && !f.docker.on {
		c.Docker = nil // -docker=false wins over a config file
		return nil
	}
	if c.Docker == nil {
		return nil
	}
	if set["docker-endpoint"] {
		c.Docker.Endpoint = f.docker.endpoint
	}
	if set["docker-resync"] {
		if f.docker.resync <= 0 {
			return usageError{fmt.Sprintf("-docker-resync %v: want a positive duration such as 60s", f.docker.resync)}
		}
		c.Docker.Resync = f.docker.resync
	}
	if set["docker-internal"] {
		c.Docker.Internal = f.docker.internal
	}
	if set["docker-label"] {
		c.Docker.Label = f.docker.label
	}
	if c.Docker.Endpoint == "" {
		c.Docker.Endpoint = os.Getenv("DOCKER_HOST") // as the docker CLI reads it
	}
	return nil
}

// newDockerWatcher returns the watcher of this node's containers, or nil
// when the agent has no docker settings.
func newDockerWatcher(ds *dockerSettings, reg *registry.Registry, addr string, log *slog.Logger) (*docker.Watcher, error) {
	if ds == nil {
		return nil, nil
	}
	cfg := docker.DefaultConfig()
	cfg.Catalog = reg
	cfg.Address = addr
	cfg.Internal = ds.Internal
	cfg.Label = ds.Label
	if ds.Endpoint != "" {
		cfg.Endpoint = ds.Endpoint
	}
	if ds.Resync > 0 {
		cfg.Resync = ds.Resync
	}
	cfg.Logger = log.With("component", "docker")
	return docker.New(cfg)
}

var _ health.DockerExec = (*docker.Exec)(nil)

// newDockerExec returns what runs docker checks (checks with
// DockerContainerID) on the engine the agent's docker settings name, else
// DOCKER_HOST's, else the default socket, as Consul finds its engine. It
// connects only when such a check runs.
func newDockerExec(ds *dockerSettings) (*docker.Exec, error) {
	endpoint := os.Getenv("DOCKER_HOST")
	if ds != nil && ds.Endpoint != "" {
		endpoint = ds.Endpoint
	}
	return docker.NewExec(endpoint, 0)
}
