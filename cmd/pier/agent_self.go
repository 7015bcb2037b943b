package main

import (
	"net"
	"strconv"
)

// debugSettings are the agent's settings that /v1/agent/self shows in
// DebugConfig besides those the registry knows, under the names and in the
// formats of Consul's sanitized RuntimeConfig (addresses as
// "tcp://ip:port", durations as Go writes them, secrets as "hidden").
func debugSettings(cfg agentConfig) map[string]any {
	addrs := func(port int, nets ...string) []string {
		out := []string{}
		for _, h := range cfg.Client {
			for _, n := range nets {
				out = append(out, n+"://"+net.JoinHostPort(h, strconv.Itoa(port)))
			}
		}
		return out
	}
	orEmpty := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	httpsAddrs := []string{}
	if cfg.TLS.Port >= 0 {
		httpsAddrs = addrs(cfg.TLS.Port, "tcp")
	}
	return map[string]any{
		"BindAddr":             cfg.Bind,
		"SerfBindAddrLAN":      "tcp://" + net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.SerfLANPort)),
		"ClientAddrs":          orEmpty(cfg.Client),
		"HTTPPort":             cfg.HTTPPort,
		"HTTPAddrs":            addrs(cfg.HTTPPort, "tcp"),
		"HTTPSPort":            cfg.TLS.Port,
		"HTTPSAddrs":           httpsAddrs,
		"DNSPort":              cfg.DNS.Port,
		"DNSAddrs":             addrs(cfg.DNS.Port, "tcp", "udp"),
		"DNSDomain":            cfg.DNS.Domain,
		"DNSRecursors":         orEmpty(cfg.DNS.Recursors),
		"DNSOnlyPassing":       cfg.DNS.OnlyPassing,
		"StartJoinAddrsLAN":    orEmpty(cfg.StartJoin),
		"RetryJoinLAN":         orEmpty(cfg.RetryJoin),
		"RetryJoinIntervalLAN": cfg.RetryMax.String(),
		"ReconnectTimeoutLAN":  cfg.Reconnect.String(),
		"EncryptKey":           "hidden", // Consul hides every secret, set or not
		"DevMode":              cfg.Dev,
		// Consul takes -bootstrap-expect 1 (and -dev) for -bootstrap.
		"Bootstrap":       cfg.Server.On && cfg.Server.BootstrapExpect == 1,
		"BootstrapExpect": bootstrapExpect(cfg.Server.BootstrapExpect),
		"Logging":         map[string]any{"LogLevel": cfg.LogLevel, "LogJSON": cfg.LogJSON},
	}
}

// bootstrapExpect is Consul's BootstrapExpect: 1 is bootstrap mode there,
// and shows as 0.
func bootstrapExpect(n int) int {
	if n == 1 {
		return 0
	}
	return n
}
