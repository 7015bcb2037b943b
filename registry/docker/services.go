package docker

import (
	"encoding/json"
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/pier-dev/pier/registry"
)

// container is the part of the engine's /containers/{id}/json answer that
// the conventions read.
type container struct {
	ID     string
	Name   string // with the engine's leading "/"
	Config struct {
		Image        string
		Env          []string
		Labels       map[string]string
		ExposedPorts map[string]struct{}
		StopSignal   string
	}
	State struct {
		Running    bool
		Paused     bool
		Restarting bool
	}
	HostConfig struct {
		NetworkMode string
	}
	NetworkSettings struct {
		IPAddress string
		Ports     map[string][]struct {
			HostIP   string `json:"HostIp"`
			HostPort string
		}
		Networks map[string]struct {
			IPAddress string
		}
	}
}

// naming is what the conventions need besides the container.
type naming struct {
	Hostname string // first part of service IDs
	Address  string // the agent's advertise address
	Internal bool   // container IP and exposed port instead of the host's
}

// registration is one service to register for a container.
type registration struct {
	Service registry.Service
	Checks  []registry.Check
}

// port is one exposed port of a container and where it is published.
type port struct {
	Exposed  int
	Proto    string // tcp, udp, sctp
	HostIP   string // "" or unspecified: every host address
	HostPort int    // 0: not published
}

// ports lists a container's ports in order, as Registrator finds them: the
// exposed ports (published as they are under --net=host), then the engine's
// runtime mappings.
func (c *container) ports() []port {
	byKey := map[string]port{}
	host := c.HostConfig.NetworkMode == "host"
	for k := range c.Config.ExposedPorts {
		if p, ok := parsePortKey(k); ok {
			if host {
				p.HostPort = p.Exposed
			}
			byKey[k] = p
		}
	}
	for k, bindings := range c.NetworkSettings.Ports {
		p, ok := parsePortKey(k)
		if !ok {
			continue
		}
		// Docker publishes one binding per address family: prefer IPv4.
		pick := -1
		for i, b := range bindings {
			if ip := net.ParseIP(b.HostIP); b.HostIP == "" || ip != nil && ip.To4() != nil {
				pick = i
				break
			}
		}
		if pick < 0 && len(bindings) > 0 {
			pick = 0
		}
		if pick >= 0 {
			p.HostIP = bindings[pick].HostIP
			p.HostPort, _ = strconv.Atoi(bindings[pick].HostPort)
		} else if old, ok := byKey[k]; ok {
			p.HostPort = old.HostPort
		}
		byKey[k] = p
	}
	out := make([]port, 0, len(byKey))
	for _, p := range byKey {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b port) int {
		if a.Exposed != b.Exposed {
			return a.Exposed - b.Exposed
		}
		return strings.Compare(a.Proto, b.Proto)
	})
	return out
}

func parsePortKey(k string) (port, bool) {
	num, proto, ok := strings.Cut(k, "/")
	if !ok {
		proto = "tcp"
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 || proto == "" {
		return port{}, false
	}
	return port{Exposed: n, Proto: strings.ToLower(proto)}, true
}

// containerIP is the container's address on its networks: the default
// bridge's, else the first network's by name.
func (c *container) containerIP() string {
	if c.NetworkSettings.IPAddress != "" {
		return c.NetworkSettings.IPAddress
	}
	names := make([]string, 0, len(c.NetworkSettings.Networks))
	for n := range c.NetworkSettings.Networks {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if ip := c.NetworkSettings.Networks[n].IPAddress; ip != "" {
			return ip
		}
	}
	return ""
}

// imageName is the base name of the image without tag or digest:
// registry.example.com/team/api:1.2 is "api".
func imageName(image string) string {
	base := path.Base(image)
	if i := strings.IndexAny(base, ":@"); i >= 0 {
		base = base[:i]
	}
	return base
}

// metadata collects the SERVICE_* settings of one port, as Registrator
// does: keys lowercased without the prefix; SERVICE_<port>_KEY applies to
// that port only and wins over SERVICE_KEY; labels win over the
// environment, and pier.service.key labels over SERVICE_KEY labels.
func metadata(c *container, exposed int) (meta map[string]string, fromPort map[string]bool) {
	meta, fromPort = map[string]string{}, map[string]bool{}
	portStr := strconv.Itoa(exposed)
	set := func(key, v string) {
		key = strings.ToLower(key)
		if num, rest, ok := strings.Cut(key, "_"); ok && rest != "" && isDigits(num) {
			if num == portStr {
				meta[rest], fromPort[rest] = v, true
			}
			return
		}
		if !fromPort[key] && key != "" {
			meta[key] = v
		}
	}
	for _, kv := range c.Config.Env {
		k, v, ok := strings.Cut(kv, "=")
		if key, found := strings.CutPrefix(k, "SERVICE_"); ok && found {
			set(key, v)
		}
	}
	labels := make([]string, 0, len(c.Config.Labels))
	for k := range c.Config.Labels {
		labels = append(labels, k)
	}
	slices.Sort(labels)
	for _, k := range labels {
		if key, found := strings.CutPrefix(k, "SERVICE_"); found {
			set(key, c.Config.Labels[k])
		}
	}
	for _, k := range labels {
		if key, found := strings.CutPrefix(k, "pier.service."); found {
			set(strings.ReplaceAll(key, ".", "_"), c.Config.Labels[k])
		}
	}
	return meta, fromPort
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// ignored reports whether a SERVICE_IGNORE value asks to skip: any value
// but an explicit false, 0 or no.
func ignored(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "", "false", "0", "no":
		return false
	}
	return true
}

// reserved are the keys the conventions consume; they do not go into Meta.
var reserved = map[string]bool{"name": true, "id": true, "tags": true, "ignore": true}

// services applies Registrator's conventions to a running container: one
// registration per published port (every exposed port when internal). It
// returns what it could build and a problem for each port it could not.
func services(c *container, n naming) ([]registration, []error) {
	var all []port
	for _, p := range c.ports() {
		if n.Internal || p.HostPort != 0 {
			all = append(all, p)
		}
	}
	group := len(all) > 1
	cname := strings.TrimPrefix(c.Name, "/")
	var out []registration
	var errs []error
	seen := map[string]bool{}
	for _, p := range all {
		meta, fromPort := metadata(c, p.Exposed)
		if ignored(meta["ignore"]) {
			continue
		}
		exposed := strconv.Itoa(p.Exposed)
		name := meta["name"]
		if name == "" {
			name = imageName(c.Config.Image)
		}
		if group && !fromPort["name"] {
			name += "-" + exposed // one service per port, as Registrator names them
		}
		id := n.Hostname + ":" + cname + ":" + exposed
		var tags []string
		for _, t := range strings.Split(meta["tags"], ",") {
			if t = strings.TrimSpace(t); t != "" {
				tags = append(tags, t)
			}
		}
		if p.Proto != "tcp" {
			id += ":" + p.Proto
			tags = append(tags, p.Proto)
		}
		if meta["id"] != "" {
			id = meta["id"]
		}
		addr, pnum := n.Address, p.HostPort
		switch {
		case n.Internal:
			pnum = p.Exposed
			if ip := c.containerIP(); ip != "" {
				addr = ip
			}
		case p.HostIP != "" && !net.ParseIP(p.HostIP).IsUnspecified():
			addr = p.HostIP // published on one host address only: that one
		}
		def := registry.ServiceDefinition{ID: id, Name: name, Tags: tags, Address: addr, Port: &pnum}
		for k, v := range meta {
			if reserved[k] || strings.HasPrefix(k, "check_") {
				continue
			}
			if err := registry.ValidateMeta("Meta", map[string]string{k: v}); err != nil {
				errs = append(errs, fmt.Errorf("container %s port %s: SERVICE_%s left out of Meta: %w", cname, exposed, strings.ToUpper(k), err))
				continue
			}
			if len(def.Meta) >= 64 {
				errs = append(errs, fmt.Errorf("container %s port %s: more than 64 SERVICE_* keys; SERVICE_%s left out of Meta", cname, exposed, strings.ToUpper(k)))
				continue
			}
			if def.Meta == nil {
				def.Meta = map[string]string{}
			}
			def.Meta[k] = v
		}
		def.Check = checkFrom(meta, addr, pnum)
		svc, checks, err := def.Build()
		if err != nil {
			errs = append(errs, fmt.Errorf("container %s port %s: %w", cname, exposed, err))
			continue
		}
		if seen[svc.ID] {
			errs = append(errs, fmt.Errorf("container %s port %s: service ID %q is already used by another port of the container", cname, exposed, svc.ID))
			continue
		}
		seen[svc.ID] = true
		out = append(out, registration{Service: svc, Checks: checks})
	}
	return out, errs
}

// checkFrom builds the check of Registrator's SERVICE_CHECK_* keys; nil
// without one. The probe goes to the address and port registered.
func checkFrom(meta map[string]string, addr string, port int) *registry.CheckRegistration {
	hostPort := net.JoinHostPort(addr, strconv.Itoa(port))
	raw := func(s string) json.RawMessage {
		if s == "" {
			return nil
		}
		b, _ := json.Marshal(s)
		return b
	}
	urlPath := func(p string) string {
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
		return p
	}
	cr := &registry.CheckRegistration{}
	interval := true
	switch {
	case meta["check_http"] != "":
		cr.HTTP = "http://" + hostPort + urlPath(meta["check_http"])
		cr.Method = meta["check_http_method"]
	case meta["check_https"] != "":
		cr.HTTP = "https://" + hostPort + urlPath(meta["check_https"])
		cr.Method = meta["check_https_method"]
		cr.TLSSkipVerify = true // a container's own certificate rarely names its host port
	case meta["check_script"] != "":
		// Registrator's interpolation, run by a shell as Consul ran the old
		// Script field. Like any script check, it runs only on an agent
		// started with -enable-script-checks; elsewhere it is critical and
		// says why.
		script := strings.ReplaceAll(meta["check_script"], "$SERVICE_IP", addr)
		script = strings.ReplaceAll(script, "$SERVICE_PORT", strconv.Itoa(port))
		cr.Args = []string{"/bin/sh", "-c", script}
	case meta["check_ttl"] != "":
		cr.TTL = raw(meta["check_ttl"])
		interval = false
	case meta["check_tcp"] != "" && !strings.EqualFold(meta["check_tcp"], "false"):
		cr.TCP = hostPort
	case meta["check_grpc"] != "" && !strings.EqualFold(meta["check_grpc"], "false"):
		cr.GRPC = hostPort
	default:
		return nil
	}
	if interval {
		iv := meta["check_interval"]
		if iv == "" {
			iv = "10s" // Registrator's default interval
		}
		cr.Interval = raw(iv)
		cr.Timeout = raw(meta["check_timeout"])
	}
	cr.Status = meta["check_initial_status"]
	cr.DeregisterCriticalServiceAfter = raw(meta["check_deregister_after"])
	return cr
}
