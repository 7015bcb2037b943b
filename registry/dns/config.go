package dns

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
)

// Config configures a Server. It is frozen after New. The json names are
// the keys of the config file's dns_config section (registry.DecodeConfig
// reads them); "-" is not one of its keys.
type Config struct {
	Registry *registry.Registry `json:"-"` // required: the catalog answered from

	// Addrs are the host:port pairs served over both UDP and TCP. Port 0
	// picks a free port (the same one for UDP and TCP); Addrs() tells which.
	Addrs []string `json:"-"`

	Domain     string `json:"-"` // the catalog's domain, default "consul." (the file's top-level domain)
	Datacenter string `json:"-"` // the datacenter answered for; empty: the registry's

	// Recursors are the upstream servers ("ip" or "ip:port", port 53 by
	// default) tried in order for names outside Domain. Empty: the
	// nameservers of ResolvConf, without pier's own addresses.
	Recursors       []string       `json:"-"`                // the file's top-level recursors
	ResolvConf      string         `json:"-"`                // default "/etc/resolv.conf"; "" reads nothing
	RecursorTimeout time.Duration  `json:"recursor_timeout"` // per recursor and try; default 2s, as Consul
	AllowRecursion  []netip.Prefix `json:"allow"`            // sources besides loopback that may recurse (addresses or CIDRs)

	OnlyPassing    bool                     `json:"only_passing"`     // leave warning instances out too (critical ones always are)
	NodeTTL        time.Duration            `json:"node_ttl"`         // TTL of node and addr answers; default 0, as Consul
	ServiceTTL     map[string]time.Duration `json:"service_ttl"`      // by service name; "*" and "prefix*" are wildcards; default 0
	EnableTruncate bool                     `json:"enable_truncate"`  // set TC when UDPAnswerLimit trims an answer; default true
	UDPAnswerLimit int                      `json:"udp_answer_limit"` // answers in a UDP reply without EDNS; default 3, as Consul
	MaxUDPSize     int                      `json:"-"`                // the EDNS payload size pier advertises, and its largest UDP reply whatever a query advertises (no amplification); default 1232 (DNS flag day 2020)

	CacheSize   int           `json:"-"` // forwarded answers kept; default 10000, -1: none
	CacheMaxTTL time.Duration `json:"-"` // upper bound on how long a forwarded answer is kept; default 1h

	// MaxAnswers caps the catalog answers kept per snapshot, so that a flood
	// of random names cannot grow memory; beyond it answers are computed
	// each time. Default 20000.
	MaxAnswers int `json:"-"`
	// MaxInflight caps the UDP queries being forwarded at once; more get
	// SERVFAIL. Default 1000.
	MaxInflight int `json:"-"`

	// Remote answers names of other datacenters (name.service.dc2,
	// node.node.dc2); nil: they are NXDOMAIN (remote.go).
	Remote Remote `json:"-"`

	Logger *slog.Logger     `json:"-"` // nil: discard
	Now    func() time.Time `json:"-"` // the clock of the forwarding cache; nil: time.Now (a test knob)

	Registerer prometheus.Registerer `json:"-"` // nil: no metrics
}

// DefaultConfig returns the defaults a Consul user expects; Registry must
// still be set.
func DefaultConfig() Config {
	return Config{
		Addrs:           []string{"127.0.0.1:8600"}, // Consul's DNS port, local only
		Domain:          "consul.",
		ResolvConf:      "/etc/resolv.conf",
		RecursorTimeout: 2 * time.Second, // Consul's recursor_timeout
		EnableTruncate:  true,            // so that clients retry over TCP instead of seeing a partial set
		UDPAnswerLimit:  3,               // Consul's udp_answer_limit
		MaxUDPSize:      1232,            // fits any path MTU without IP fragmentation
		CacheSize:       10000,
		CacheMaxTTL:     time.Hour,
		MaxAnswers:      20000,
		MaxInflight:     1000,
	}
}

// check fills in defaults for zero values and validates cfg.
func (cfg *Config) check() error {
	def := DefaultConfig()
	if cfg.Registry == nil {
		return errors.New("dns: a registry is required")
	}
	if len(cfg.Addrs) == 0 {
		return errors.New("dns: at least one listen address is required")
	}
	for _, a := range cfg.Addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("dns: listen address %q: %w", a, err)
		}
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("dns: listen address %q: not an IP address", a)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return fmt.Errorf("dns: listen address %q: bad port", a)
		}
	}
	if cfg.Domain == "" {
		cfg.Domain = def.Domain
	}
	cfg.Domain = mdns.CanonicalName(cfg.Domain)
	if _, ok := mdns.IsDomainName(cfg.Domain); !ok || cfg.Domain == "." {
		return fmt.Errorf("dns: domain %q is not a domain name", cfg.Domain)
	}
	if cfg.Datacenter == "" {
		cfg.Datacenter = cfg.Registry.Config().Datacenter
	}
	if cfg.RecursorTimeout <= 0 {
		cfg.RecursorTimeout = def.RecursorTimeout
	}
	if cfg.UDPAnswerLimit <= 0 {
		cfg.UDPAnswerLimit = def.UDPAnswerLimit
	}
	if cfg.MaxUDPSize == 0 {
		cfg.MaxUDPSize = def.MaxUDPSize
	}
	if cfg.MaxUDPSize < 512 || cfg.MaxUDPSize > 65535 {
		return fmt.Errorf("dns: EDNS payload size %d: want 512-65535", cfg.MaxUDPSize)
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = def.CacheSize
	}
	if cfg.CacheMaxTTL <= 0 {
		cfg.CacheMaxTTL = def.CacheMaxTTL
	}
	if cfg.MaxAnswers <= 0 {
		cfg.MaxAnswers = def.MaxAnswers
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = def.MaxInflight
	}
	if cfg.NodeTTL < 0 {
		return errors.New("dns: node TTL must not be negative")
	}
	for k, v := range cfg.ServiceTTL {
		if v < 0 {
			return fmt.Errorf("dns: service TTL of %q must not be negative", k)
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var recs []string
	for _, r := range cfg.Recursors {
		a, err := recursorAddr(r)
		if err != nil {
			return err
		}
		recs = append(recs, a)
	}
	if len(recs) == 0 && cfg.ResolvConf != "" {
		var err error
		if recs, err = readResolvConf(cfg.ResolvConf, cfg.Addrs); err != nil {
			return err
		}
	}
	cfg.Recursors = recs
	return nil
}

// recursorAddr turns "ip" or "ip:port" into "ip:port".
func recursorAddr(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, 53).String(), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return "", fmt.Errorf("dns: recursor %q: want an IP address or ip:port", s)
	}
	return ap.String(), nil
}

// readResolvConf returns the nameservers of a resolv.conf file, leaving out
// any that is pier itself (so that pier in resolv.conf does not make it
// forward to itself). A missing file means no recursors.
func readResolvConf(path string, self []string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(strings.SplitN(fields[1], "%", 2)[0])
		if err != nil {
			continue
		}
		ap := netip.AddrPortFrom(ip.Unmap(), 53)
		if isSelf(ap, self) {
			continue
		}
		out = append(out, ap.String())
	}
	return out, sc.Err()
}

// isSelf reports whether ap is one of pier's listen addresses. An
// unspecified listen address covers every local address; of those, only
// loopback is recognised without asking the interfaces.
func isSelf(ap netip.AddrPort, self []string) bool {
	for _, s := range self {
		l, err := netip.ParseAddrPort(s)
		if err != nil || l.Port() != ap.Port() {
			continue
		}
		if l.Addr().Unmap() == ap.Addr() || (l.Addr().IsUnspecified() && ap.Addr().IsLoopback()) {
			return true
		}
	}
	return false
}

// serviceTTL returns the TTL for service name: an exact key, else the
// longest matching "prefix*" key, else 0. Keys and names compare without case.
func serviceTTL(ttls map[string]time.Duration, name string) uint32 {
	if len(ttls) == 0 {
		return 0
	}
	best, bestLen := time.Duration(0), -1
	for k, v := range ttls {
		if strings.EqualFold(k, name) {
			return seconds(v)
		}
		if p, ok := strings.CutSuffix(k, "*"); ok && len(p) > bestLen && len(p) <= len(name) && strings.EqualFold(name[:len(p)], p) {
			best, bestLen = v, len(p)
		}
	}
	return seconds(best)
}

func seconds(d time.Duration) uint32 { return uint32(min(d/time.Second, 1<<31-1)) }
