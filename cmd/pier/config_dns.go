package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"sigs.k8s.io/yaml"

	"github.com/pier-dev/pier/registry/dns"
)

// dnsSettings are the agent's DNS interface and resolver settings, with
// Consul's names: ports.dns, domain, recursors and dns_config.
type dnsSettings struct {
	Port            int
	Domain          string
	Recursors       []string
	Allow           []netip.Prefix // -dns-allow: sources besides loopback that may recurse
	OnlyPassing     bool
	NodeTTL         time.Duration
	ServiceTTL      map[string]time.Duration
	EnableTruncate  bool
	UDPAnswerLimit  int
	RecursorTimeout time.Duration
}

func defaultDNSSettings() dnsSettings {
	d := dns.DefaultConfig()
	return dnsSettings{
		Port:            8600, // Consul's DNS port
		Domain:          d.Domain,
		EnableTruncate:  d.EnableTruncate,
		UDPAnswerLimit:  d.UDPAnswerLimit,
		RecursorTimeout: d.RecursorTimeout,
	}
}

// dnsFile is dns_config in a config file.
type dnsFile struct {
	OnlyPassing     *bool
	NodeTTL         *string
	ServiceTTL      map[string]string // keys are service names: read again from the raw file, unnormalized
	EnableTruncate  *bool
	UDPAnswerLimit  *int
	RecursorTimeout *string
	AllowStale      *bool    // accepted and ignored: every pier agent answers from its own catalog
	MaxStale        *string  // likewise
	Allow           []string // pier's own: sources besides loopback that may recurse, as -dns-allow
}

// dnsFlags are the agent's DNS flags.
type dnsFlags struct {
	port      int
	domain    string
	recursors stringList
	allow     stringList
}

func (f *agentFlags) addDNSFlags() {
	fs := f.fs
	fs.IntVar(&f.dns.port, "dns-port", 0, "port of the DNS interface, UDP and TCP, on each -client address (default 8600; 0: any free port, printed in the log)")
	fs.StringVar(&f.dns.domain, "domain", "", "domain answered from the catalog (default consul.)")
	fs.Var(&f.dns.recursors, "recursor", "upstream DNS server, ip or ip:port, for names outside the domain (repeatable; default: the nameservers in /etc/resolv.conf)")
	fs.Var(&f.dns.allow, "dns-allow", "address or CIDR, besides loopback, that may use the recursors through pier (repeatable)")
}

// mergeDNS merges a config file's DNS keys into c; raw is the file, for the
// service_ttl keys that key normalization would rewrite.
func (c *agentConfig) mergeDNS(fc *fileConfig, raw []byte) error {
	d := &c.DNS
	if fc.Ports != nil && fc.Ports.DNS != nil {
		d.Port = *fc.Ports.DNS
	}
	if fc.Domain != nil {
		d.Domain = *fc.Domain
	}
	if fc.Recursors != nil {
		d.Recursors = fc.Recursors
	}
	dc := fc.DNSConfig
	if dc == nil {
		return nil
	}
	if dc.OnlyPassing != nil {
		d.OnlyPassing = *dc.OnlyPassing
	}
	if dc.EnableTruncate != nil {
		d.EnableTruncate = *dc.EnableTruncate
	}
	for _, a := range dc.Allow {
		p, err := parseAllow(a)
		if err != nil {
			return fmt.Errorf("dns_config.allow: %w", err)
		}
		d.Allow = append(d.Allow, p)
	}
	if dc.UDPAnswerLimit != nil {
		if *dc.UDPAnswerLimit < 1 {
			return fmt.Errorf("dns_config.udp_answer_limit: %d: want at least 1", *dc.UDPAnswerLimit)
		}
		d.UDPAnswerLimit = *dc.UDPAnswerLimit
	}
	for _, t := range []struct {
		key string
		src *string
		dst *time.Duration
	}{{"node_ttl", dc.NodeTTL, &d.NodeTTL}, {"recursor_timeout", dc.RecursorTimeout, &d.RecursorTimeout}} {
		if t.src == nil {
			continue
		}
		v, err := time.ParseDuration(*t.src)
		if err != nil || v < 0 {
			return fmt.Errorf("dns_config.%s: %q is not a duration such as 5s", t.key, *t.src)
		}
		*t.dst = v
	}
	if dc.ServiceTTL != nil {
		ttls, err := rawServiceTTL(raw)
		if err != nil {
			return err
		}
		if d.ServiceTTL == nil {
			d.ServiceTTL = map[string]time.Duration{}
		}
		for k, s := range ttls {
			v, err := time.ParseDuration(s)
			if err != nil || v < 0 {
				return fmt.Errorf("dns_config.service_ttl[%q]: %q is not a duration such as 5s", k, s)
			}
			d.ServiceTTL[k] = v
		}
	}
	return nil
}

// rawServiceTTL reads dns_config.service_ttl from a config file with its
// keys (service names, "*" wildcards) as written.
func rawServiceTTL(b []byte) (map[string]string, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, err
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(j, &top); err != nil {
		return nil, err
	}
	norm := func(k string) string {
		return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(k))
	}
	for k, v := range top {
		if norm(k) != "dnsconfig" {
			continue
		}
		var dc map[string]json.RawMessage
		if err := json.Unmarshal(v, &dc); err != nil {
			return nil, err
		}
		for k, v := range dc {
			if norm(k) != "servicettl" {
				continue
			}
			var ttls map[string]string
			if err := json.Unmarshal(v, &ttls); err != nil {
				return nil, errors.New("dns_config.service_ttl: want a map of service name to duration")
			}
			return ttls, nil
		}
	}
	return nil, nil
}

// resolveDNS applies the DNS flags the user set over the config files.
func (c *agentConfig) resolveDNS(f *agentFlags, set map[string]bool) error {
	d := &c.DNS
	if set["dns-port"] {
		d.Port = f.dns.port
	}
	if set["domain"] {
		d.Domain = f.dns.domain
	}
	if len(f.dns.recursors) > 0 {
		d.Recursors = append([]string(nil), f.dns.recursors...)
	}
	for _, a := range f.dns.allow {
		p, err := parseAllow(a)
		if err != nil {
			return usageError{"-dns-allow " + err.Error()}
		}
		d.Allow = append(d.Allow, p)
	}
	for _, r := range d.Recursors {
		if _, err := netip.ParseAddr(r); err == nil {
			continue
		}
		if ap, err := netip.ParseAddrPort(r); err != nil || ap.Port() == 0 {
			return usageError{fmt.Sprintf("-recursor %q: want an IP address or ip:port", r)}
		}
	}
	if _, ok := mdns.IsDomainName(d.Domain); !ok || strings.Trim(d.Domain, ".") == "" {
		return usageError{fmt.Sprintf("-domain %q: not a domain name", d.Domain)}
	}
	if d.Port < 0 || d.Port > 65535 {
		return usageError{fmt.Sprintf("-dns-port %d: out of range (0-65535)", d.Port)}
	}
	return nil
}

// parseAllow reads an address or a CIDR that may use the recursors.
func parseAllow(a string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(a)
	if err != nil {
		ip, err2 := netip.ParseAddr(a)
		if err2 != nil {
			return p, fmt.Errorf("%q: want an address or a CIDR such as 10.0.0.0/8", a)
		}
		p = netip.PrefixFrom(ip, ip.BitLen())
	}
	return p.Masked(), nil
}
