package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"sigs.k8s.io/yaml"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/api"
)

// agentConfig is the agent's configuration after defaults, config files and
// flags are merged, in that order of precedence (flags win, as in Consul).
type agentConfig struct {
	Node        string
	NodeID      string // a UUID; empty: kept in the data dir's node-id file (made the first time)
	Datacenter  string
	DataDir     string
	Client      []string // addresses the HTTP API listens on
	Bind        string
	Advertise   string
	HTTPPort    int
	SerfLANPort int
	StartJoin   []string      // joined at start; the agent fails if none answers
	RetryJoin   []string      // joined in the background until one answers
	RetryMax    time.Duration // longest pause between retry-join attempts
	Encrypt     string        // base64 gossip key
	Reconnect   time.Duration // a failed node is reaped after this
	NodeMeta    map[string]string
	Locality    *registry.Locality // Consul's locality: this agent's region and zone
	LogLevel    string
	LogJSON     bool
	Dev         bool
	Services    []registry.ConfigService
	TLS         api.TLS         // the API over HTTPS
	InternalTLS internalTLS     // the server port's TLS: Consul's tls.internal_rpc (agent_tls.go)
	KVMaxBytes  int64           // limits.kv_max_store_bytes: local KV writes past this are refused (0: none)
	Proxy       *proxySettings  // the front door; nil: this agent runs none
	Docker      *dockerSettings // registration of this host's containers; nil: off (agent_docker.go)
	DNS         dnsSettings     // the DNS interface and resolver (config_dns.go)
	Server      serverSettings  // Raft: whether this agent is a server (config_server.go)

	EnableScriptChecks bool // run (and accept) checks with Args, as Consul's enable_script_checks
	EnableDebug        bool // serve Go's profiles at /debug/pprof/, as Consul's enable_debug
	// acl.enable_token_persistence: tokens set by PUT /v1/agent/token/
	// are kept in the data dir's acl-tokens.json.
	ACLTokenPersistence bool

	// limits.http_max_conns_per_client: API requests one client IP may
	// have in progress; 0 in the file means no limit, as in Consul.
	HTTPMaxConnsPerClient int

	Metrics metricsSettings // Prometheus metrics (agent_metrics.go)

	ACL api.ACLConfig // API tokens; off unless a config file enables them (config_acl.go)

	// Warnings about the configuration (deprecated keys), logged at start.
	Warnings []string
}

func defaultAgentConfig() agentConfig {
	host, _ := os.Hostname()
	return agentConfig{
		Node:        host,
		Datacenter:  "dc1",
		Client:      []string{"127.0.0.1"}, // the API is local unless asked otherwise, as Consul
		Bind:        "0.0.0.0",
		HTTPPort:    8500,
		TLS:         api.TLS{Port: -1}, // Consul's default: no HTTPS
		SerfLANPort: 8301,
		RetryMax:    30 * time.Second, // Consul's retry_interval
		Reconnect:   72 * time.Hour,   // Consul's reconnect_timeout
		LogLevel:    "info",
		DNS:         defaultDNSSettings(),
		Server:      defaultServerSettings(),

		HTTPMaxConnsPerClient: api.DefaultConfig().MaxConnsPerClient, // 200, as Consul
	}
}

// fileConfig is the config file's shape: Consul's key names, in YAML or JSON,
// snake_case or CamelCase.
type fileConfig struct {
	CAFile           *string
	CertFile         *string
	KeyFile          *string
	VerifyIncoming   *bool
	Limits           *limitsFile
	NodeName         *string
	NodeID           *string
	Datacenter       *string
	DataDir          *string
	ClientAddr       *string
	BindAddr         *string
	AdvertiseAddr    *string
	StartJoin        []string
	RetryJoin        []string
	RetryInterval    *time.Duration
	Encrypt          *string
	ReconnectTimeout *time.Duration
	Ports            *struct {
		HTTP    *int
		HTTPS   *int
		SerfLAN *int
		SerfWAN *int
		DNS     *int
		Server  *int
	}
	NodeMeta map[string]string
	Locality *registry.Locality // decoded over the earlier files' locality
	LogLevel *string
	LogJSON  *bool
	Service  json.RawMessage
	Services []json.RawMessage
	Proxy    json.RawMessage // decoded by mergeProxy into lb.Config and proxy.Config
	Docker   *dockerFile

	MetricsAddr *string
	Telemetry   *telemetryFile

	Domain    *string
	Recursors []string
	DNSConfig json.RawMessage // dns.Config's keys (mergeDNS)

	EnableScriptChecks *bool
	EnableDebug        *bool // Consul's enable_debug: /debug/pprof/ on the HTTP API

	ACL json.RawMessage // mergeACL
	// PrimaryDatacenter is where ACL objects are written and replicated
	// from (registry/acl's replication.go); unset: this datacenter.
	PrimaryDatacenter *string
	TLS               *tlsFile // tls.defaults and tls.internal_rpc: the server port's TLS (agent_tls.go)

	serverFile // server, bootstrap_expect, bootstrap, autopilot (config_server.go)
}

// agentFlags are the agent's flags; set records which ones the user gave, so
// that only those override the config files.
type agentFlags struct {
	fs           *flag.FlagSet
	configFiles  stringList
	configDirs   stringList
	nodeMeta     stringList
	join         stringList
	retryJoin    stringList
	joinWAN      stringList
	retryJoinWAN stringList
	c            agentConfig
	client       string
	proxyAddr    string
	dns          dnsFlags
	docker       dockerFlags
	metricsAddr  string
	bootstrap    bool
}

func newAgentFlags() *agentFlags {
	f := &agentFlags{fs: newFlagSet("agent")}
	fs := f.fs
	fs.StringVar(&f.c.Node, "node", "", "name of this node in the cluster (default: the host name)")
	fs.StringVar(&f.c.NodeID, "node-id", "", "UUID of this node, as Consul's node_id (default: made once and kept in the data dir)")
	fs.StringVar(&f.c.Datacenter, "datacenter", "", "datacenter of this agent (default dc1)")
	fs.StringVar(&f.c.DataDir, "data-dir", "", "directory where this node's registrations persist (required unless -dev)")
	fs.StringVar(&f.client, "client", "", "address(es), space-separated, the HTTP API listens on (default 127.0.0.1)")
	fs.StringVar(&f.c.Bind, "bind", "", "address the cluster's gossip binds to (default 0.0.0.0)")
	fs.StringVar(&f.c.Advertise, "advertise", "", "address advertised to other nodes and shown in the catalog")
	fs.IntVar(&f.c.HTTPPort, "http-port", 0, "port of the HTTP API (default 8500)")
	fs.IntVar(&f.c.TLS.Port, "https-port", 0, "port of the HTTP API over TLS (default -1: off; needs cert_file and key_file)")
	fs.IntVar(&f.c.SerfLANPort, "serf-lan-port", 0, "port of the cluster's gossip (default 8301)")
	fs.Var(&f.join, "join", "address of an agent to join at start; the agent stops if none answers (repeatable)")
	fs.Var(&f.retryJoin, "retry-join", "address of an agent to join, retried with backoff until it answers (repeatable)")
	fs.DurationVar(&f.c.RetryMax, "retry-interval", 0, "longest pause between -retry-join attempts (default 30s)")
	fs.StringVar(&f.c.Encrypt, "encrypt", "", "gossip encryption key, base64 of 16, 24 or 32 bytes (pier keygen makes one)")
	fs.DurationVar(&f.c.Reconnect, "reconnect-timeout", 0, "how long a failed node stays in the catalog before it is reaped (default 72h)")
	fs.StringVar(&f.c.LogLevel, "log-level", "", "log level: debug, info, warn, error (default info)")
	fs.BoolVar(&f.c.LogJSON, "log-json", false, "write logs as JSON lines")
	fs.BoolVar(&f.c.Dev, "dev", false, "run a single in-memory development node on 127.0.0.1")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "also serve Prometheus metrics (/metrics) on this host:port; they are always on the HTTP API too")
	fs.StringVar(&f.proxyAddr, "proxy-addr", "", "address the front-door proxy listens on, such as :80 (port 0: any free port; default with -dev: "+devProxyAddr+")")
	fs.BoolVar(&f.c.EnableScriptChecks, "enable-script-checks", false, "run health checks that execute commands (Args); anyone who can reach the HTTP API can then run commands on this host")
	fs.Var(&f.configFiles, "config-file", "a config file, YAML or JSON (repeatable)")
	fs.Var(&f.configDirs, "config-dir", "a directory of *.yaml, *.yml and *.json config files, read in name order (repeatable)")
	fs.Var(&f.nodeMeta, "node-meta", "key:value metadata of this node (repeatable)")
	f.addDNSFlags()
	f.addDockerFlags()
	// Consul's command lines (the talk's among them) work unchanged: pier
	// has no servers to elect, so these change nothing.
	fs.BoolVar(&f.c.Server.On, "server", false, "run as a server: hold the Raft state (KV, sessions, ACLs, external services) and vote")
	fs.IntVar(&f.c.Server.BootstrapExpect, "bootstrap-expect", 0, "form a new Raft group once this many servers are seen in gossip (1: alone)")
	fs.BoolVar(&f.bootstrap, "bootstrap", false, "form a Raft group of this server alone (the same as -bootstrap-expect 1)")
	fs.IntVar(&f.c.Server.Port, "server-port", 0, "port of Raft and the servers' internal HTTP (default 8300; with -dev any free port)")
	fs.IntVar(&f.c.Server.WANPort, "serf-wan-port", 0, "port of the servers' WAN gossip across datacenters (default 8302; with -dev any free port)")
	fs.Var(&f.joinWAN, "join-wan", "address of a server of another datacenter to join the WAN pool with at start; the agent stops if none answers (repeatable, servers only)")
	fs.Var(&f.retryJoinWAN, "retry-join-wan", "address of a server to join the WAN pool with, retried with backoff until it answers (repeatable, servers only)")
	fs.Bool("ui", false, "accepted for Consul's command lines and ignored: the web UI is always at /ui/")
	return f
}

// resolve merges defaults, config files and the flags the user set.
func (f *agentFlags) resolve() (agentConfig, error) {
	c := defaultAgentConfig()
	set := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if set["dev"] && f.c.Dev {
		c.Dev = true
		c.Bind = "127.0.0.1"
	}
	files, err := f.files()
	if err != nil {
		return c, err
	}
	for _, file := range files {
		if err := c.loadFile(file); err != nil {
			return c, err
		}
	}
	f.override(&c, set)
	if err := c.TLS.Validate(); err != nil {
		return c, usageError{"-https-port: " + err.Error()}
	}
	if t := c.InternalTLS; t.Enabled() {
		if err := t.Validate(); err != nil {
			return c, usageError{err.Error()}
		}
	}
	for _, kv := range f.nodeMeta {
		k, v, ok := strings.Cut(kv, ":")
		if !ok {
			return c, usageError{fmt.Sprintf("-node-meta %q: want key:value", kv)}
		}
		if c.NodeMeta == nil {
			c.NodeMeta = map[string]string{}
		}
		c.NodeMeta[k] = v
	}
	if err := c.resolveServer(f, set); err != nil {
		return c, err
	}
	if err := c.resolveDNS(f, set); err != nil {
		return c, err
	}
	if err := c.resolveDocker(f, set); err != nil {
		return c, err
	}
	if err := c.resolveProxy(f.proxyAddr, set["proxy-addr"]); err != nil {
		return c, err
	}
	if err := c.validateMetrics(); err != nil {
		return c, err
	}
	return c, c.validate()
}

// files lists the config files in the order they merge: every -config-file,
// then each -config-dir's *.json, *.yaml and *.yml in name order.
func (f *agentFlags) files() ([]string, error) {
	files := append([]string(nil), f.configFiles...)
	for _, dir := range f.configDirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("config dir: %w", err)
		}
		var names []string
		for _, e := range ents {
			ext := strings.ToLower(filepath.Ext(e.Name()))
			if !e.IsDir() && (ext == ".json" || ext == ".yaml" || ext == ".yml") {
				names = append(names, filepath.Join(dir, e.Name()))
			}
		}
		sort.Strings(names)
		files = append(files, names...)
	}
	return files, nil
}

// override gives the flags the user set precedence over the config files.
func (f *agentFlags) override(c *agentConfig, set map[string]bool) {
	flagWins(set, "node", &c.Node, f.c.Node)
	flagWins(set, "node-id", &c.NodeID, f.c.NodeID)
	flagWins(set, "datacenter", &c.Datacenter, f.c.Datacenter)
	flagWins(set, "data-dir", &c.DataDir, f.c.DataDir)
	flagWins(set, "client", &c.Client, strings.Fields(f.client))
	flagWins(set, "bind", &c.Bind, f.c.Bind)
	flagWins(set, "advertise", &c.Advertise, f.c.Advertise)
	flagWins(set, "https-port", &c.TLS.Port, f.c.TLS.Port)
	flagWins(set, "http-port", &c.HTTPPort, f.c.HTTPPort)
	flagWins(set, "serf-lan-port", &c.SerfLANPort, f.c.SerfLANPort)
	flagWins(set, "retry-interval", &c.RetryMax, f.c.RetryMax)
	flagWins(set, "encrypt", &c.Encrypt, f.c.Encrypt)
	flagWins(set, "reconnect-timeout", &c.Reconnect, f.c.Reconnect)
	flagWins(set, "log-level", &c.LogLevel, f.c.LogLevel)
	flagWins(set, "log-json", &c.LogJSON, f.c.LogJSON)
	flagWins(set, "enable-script-checks", &c.EnableScriptChecks, f.c.EnableScriptChecks)
	flagWins(set, "metrics-addr", &c.Metrics.Addr, f.metricsAddr)
	c.StartJoin = append(c.StartJoin, f.join...)
	c.RetryJoin = append(c.RetryJoin, f.retryJoin...)
}

// flagWins sets *dst to v when the user gave the flag called name.
func flagWins[T any](set map[string]bool, name string, dst *T, v T) {
	if set[name] {
		*dst = v
	}
}

// fileSets sets *dst to *v when the config file has the key (v not nil).
func fileSets[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

func (c *agentConfig) validate() error {
	switch {
	case c.Node == "":
		return usageError{"-node: a node name is required (the host name could not be read)"}
	case c.DataDir == "" && !c.Dev:
		return usageError{"-data-dir is required (or run a development node with -dev)"}
	case len(c.Client) == 0:
		return usageError{"-client: at least one address is required"}
	}
	if c.NodeID != "" {
		if _, err := registry.ParseNodeID(c.NodeID); err != nil {
			return usageError{err.Error()} // names node_id, as the config file and -node-id do
		}
	}
	// Port 0 picks a free port (the log says which): tests and throwaway
	// agents use it.
	for _, p := range []struct {
		name string
		v    int
	}{{"-http-port", c.HTTPPort}, {"-serf-lan-port", c.SerfLANPort}} {
		if p.v < 0 || p.v > 65535 {
			return usageError{fmt.Sprintf("%s %d: out of range (0-65535)", p.name, p.v)}
		}
	}
	for _, a := range append([]string{c.Bind, c.Advertise}, c.Client...) {
		if a != "" && net.ParseIP(a) == nil {
			return usageError{fmt.Sprintf("%q is not an IP address", a)}
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		return usageError{fmt.Sprintf("-log-level %q: want debug, info, warn or error", c.LogLevel)}
	}
	if !c.EnableScriptChecks {
		for _, ss := range c.Services {
			for _, ch := range ss.Checks {
				if len(ch.Definition.Args) > 0 {
					return fmt.Errorf("config file %s: service %q: check %q: Args: script checks are disabled; set enable_script_checks: true or -enable-script-checks", ss.File, ss.Service.ID, ch.CheckID)
				}
			}
		}
	}
	return nil
}

// loadFile merges one config file into c. Unknown keys are an error: a typo
// in a config file should stop the agent, not be ignored.
func (c *agentConfig) loadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var fc fileConfig
	if c.Locality != nil {
		l := *c.Locality // keys this file leaves out keep the earlier files' values
		fc.Locality = &l
	}
	if err := decodeConfig(b, &fc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	fileSets(&c.Node, fc.NodeName)
	fileSets(&c.NodeID, fc.NodeID)
	fileSets(&c.Datacenter, fc.Datacenter)
	fileSets(&c.ACL.PrimaryDatacenter, fc.PrimaryDatacenter)
	fileSets(&c.DataDir, fc.DataDir)
	fileSets(&c.Bind, fc.BindAddr)
	fileSets(&c.Advertise, fc.AdvertiseAddr)
	fileSets(&c.LogLevel, fc.LogLevel)
	fileSets(&c.LogJSON, fc.LogJSON)
	fileSets(&c.EnableScriptChecks, fc.EnableScriptChecks)
	fileSets(&c.EnableDebug, fc.EnableDebug)
	if fc.ClientAddr != nil {
		c.Client = strings.Fields(*fc.ClientAddr)
	}
	c.StartJoin = append(c.StartJoin, fc.StartJoin...)
	c.RetryJoin = append(c.RetryJoin, fc.RetryJoin...)
	fileSets(&c.Encrypt, fc.Encrypt)
	for _, d := range []struct {
		key string
		src *time.Duration
		dst *time.Duration
	}{{"retry_interval", fc.RetryInterval, &c.RetryMax}, {"reconnect_timeout", fc.ReconnectTimeout, &c.Reconnect}} {
		if d.src == nil {
			continue
		}
		if *d.src == 0 {
			return fmt.Errorf("config file %s: %s: want a positive duration such as 30s", path, d.key)
		}
		*d.dst = *d.src
	}
	if err := c.mergeLimits(fc.Limits); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	mergeAPITLS(&c.TLS, &fc)
	c.InternalTLS.merge(fc.TLS)
	var serverPort, wanPort *int
	if fc.Ports != nil {
		serverPort, wanPort = fc.Ports.Server, fc.Ports.SerfWAN
		fileSets(&c.HTTPPort, fc.Ports.HTTP)
		fileSets(&c.TLS.Port, fc.Ports.HTTPS)
		fileSets(&c.SerfLANPort, fc.Ports.SerfLAN)
	}
	if fc.Locality != nil {
		c.Locality = fc.Locality
		if err := c.Locality.Validate("locality"); err != nil {
			return fmt.Errorf("config file %s: %w", path, err)
		}
	}
	for k, v := range fc.NodeMeta {
		if c.NodeMeta == nil {
			c.NodeMeta = map[string]string{}
		}
		c.NodeMeta[k] = v
	}
	if err := c.Server.merge(&fc.serverFile, serverPort, wanPort); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if err := c.mergeDNS(&fc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if err := c.mergeDocker(fc.Docker); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	if err := c.mergeProxy(fc.Proxy); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	c.mergeMetrics(&fc)
	if err := c.mergeACL(fc.ACL); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return c.mergeServices(path, &fc)
}

// limitsFile is Consul's limits stanza (the keys pier takes).
type limitsFile struct {
	KVMaxStoreBytes       *int64
	HTTPMaxConnsPerClient *int
}

// mergeLimits takes Consul's limits stanza.
func (c *agentConfig) mergeLimits(l *limitsFile) error {
	if l == nil {
		return nil
	}
	if l.KVMaxStoreBytes != nil {
		if *l.KVMaxStoreBytes < 0 {
			return errors.New("limits.kv_max_store_bytes: must not be negative")
		}
		c.KVMaxBytes = *l.KVMaxStoreBytes
	}
	if l.HTTPMaxConnsPerClient != nil {
		if *l.HTTPMaxConnsPerClient < 0 {
			return errors.New("limits.http_max_conns_per_client: must not be negative (0: no limit)")
		}
		c.HTTPMaxConnsPerClient = *l.HTTPMaxConnsPerClient
	}
	return nil
}

// mergeServices adds the file's service and services definitions.
func (c *agentConfig) mergeServices(path string, fc *fileConfig) error {
	raws := fc.Services
	if len(fc.Service) > 0 && string(fc.Service) != "null" {
		raws = append([]json.RawMessage{fc.Service}, raws...)
	}
	for i, raw := range raws {
		def, err := registry.DecodeService(raw, true)
		if err != nil {
			return fmt.Errorf("config file %s: services[%d]: %w", path, i, err)
		}
		svc, checks, err := def.Build()
		if err == nil && def.SocketPath != "" && (def.Port != nil || len(def.Ports) > 0 || def.Address != "") {
			// As Consul's config files: an instance is reached on a socket
			// or at an address, and a file that says both is a mistake.
			err = errors.New("socket_path: cannot be set together with address, port or ports")
		}
		if err != nil {
			return fmt.Errorf("config file %s: services[%d]: %w", path, i, err)
		}
		c.Services = append(c.Services, registry.ConfigService{File: path, Service: svc, Checks: checks})
	}
	return nil
}

// decodeConfig decodes a config file, YAML or JSON, into v with Consul's
// key spellings (registry.DecodeConfig), rejecting unknown keys.
func decodeConfig(b []byte, v any) error {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return err
	}
	if isNull(j) {
		return nil // an empty file
	}
	if k := jsontext.Value(j).Kind(); k != '{' {
		return errors.New("expected a mapping at the top level")
	}
	return registry.DecodeConfig("", j, v)
}

// isNull reports whether a section is absent or null: both leave the
// settings as they were.
func isNull(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}
