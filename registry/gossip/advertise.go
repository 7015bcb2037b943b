package gossip

import (
	"errors"
	"fmt"
	"net"
)

// AdvertiseAddr picks the address other nodes dial and the catalog shows,
// as Consul does: advertise when set, else a specific bind address, else
// the host's first private IPv4 (a public one when there is none). A
// wildcard bind cannot be dialled, and loopback or link-local addresses
// would send other hosts to themselves.
func AdvertiseAddr(bind, advertise string) (string, error) {
	if advertise != "" {
		return advertise, nil
	}
	if ip := net.ParseIP(bind); ip != nil && !ip.IsUnspecified() {
		return bind, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("gossip: finding an address to advertise: %w", err)
	}
	return pickAdvertise(addrs)
}

func pickAdvertise(addrs []net.Addr) (string, error) {
	var private, public []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		if ipn.IP.IsPrivate() {
			private = append(private, ipn.IP.String())
		} else {
			public = append(public, ipn.IP.String())
		}
	}
	switch {
	case len(private) > 0:
		return private[0], nil
	case len(public) > 0:
		return public[0], nil
	}
	return "", errors.New("gossip: no IPv4 address to advertise found: set -advertise or -bind")
}
