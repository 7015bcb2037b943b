package main

import (
	"fmt"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/dns"
)

// dnsSettings are the agent's DNS interface and resolver: ports.dns and
// dns.Config, which takes the file's top-level domain and recursors and
// its dns_config section.
type dnsSettings struct {
	Port int
	dns.Config
}

func defaultDNSSettings() dnsSettings {
	return dnsSettings{
		Port:   8600, // Consul's DNS port
		Config: dns.DefaultConfig(),
	}
}

// dnsConfigSection is dns_config: dns.Config's keys, and Consul's that
// pier takes and ignores.
type dnsConfigSection struct {
	*dns.Config `json:",inline"`
	AllowStale  *bool   `json:"allow_stale"` // every pier agent answers from its own catalog
	MaxStale    *string `json:"max_stale"`   // likewise
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

// mergeDNS merges a config file's DNS keys into c. Allowed sources from
// several files add up.
func (c *agentConfig) mergeDNS(fc *fileConfig) error {
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
	if isNull(fc.DNSConfig) {
		return nil
	}
	// The decoder would reuse the slice's array: keep the earlier files'.
	allow := d.AllowRecursion
	d.AllowRecursion = nil
	if err := registry.DecodeConfig("dns_config", fc.DNSConfig, &dnsConfigSection{Config: &d.Config}); err != nil {
		return err
	}
	d.AllowRecursion = append(allow, d.AllowRecursion...)
	if d.UDPAnswerLimit < 1 {
		return fmt.Errorf("dns_config.udp_answer_limit: %d: want at least 1", d.UDPAnswerLimit)
	}
	return nil
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
		p, err := registry.ParsePrefix(a)
		if err != nil {
			return usageError{"-dns-allow " + err.Error()}
		}
		d.AllowRecursion = append(d.AllowRecursion, p)
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
