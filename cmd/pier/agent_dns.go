package main

import (
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/dns"
)

// newDNS builds the DNS interface: UDP and TCP on each -client address at
// the DNS port.
func newDNS(cfg agentConfig, reg *registry.Registry, remote dns.Remote, log *slog.Logger, prom prometheus.Registerer) (*dns.Server, error) {
	d := cfg.DNS
	dcfg := d.Config
	dcfg.Registry = reg
	dcfg.Addrs = nil
	for _, h := range cfg.Client {
		dcfg.Addrs = append(dcfg.Addrs, net.JoinHostPort(h, strconv.Itoa(d.Port)))
	}
	dcfg.Datacenter = cfg.Datacenter
	dcfg.Remote = remote // other datacenters' names, through the HTTP API's ?dc=
	dcfg.Logger = log.With("component", "dns")
	dcfg.Registerer = prom
	return dns.New(dcfg)
}

// dnsAddrs lists the DNS server's bound addresses for the log.
func dnsAddrs(s *dns.Server) string {
	var out []string
	for _, a := range s.Addrs() {
		out = append(out, a.String())
	}
	return strings.Join(out, ",")
}
