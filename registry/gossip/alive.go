package gossip

import (
	"errors"
	"fmt"
	"net"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/memberlist"

	"github.com/pier-dev/pier/registry"
)

// maxNodeName matches the registry's limit on a node name.
const maxNodeName = 256

// NotifyAlive is memberlist's AliveDelegate: it runs before a node announced
// by an alive message or a push/pull enters memberlist's list. Without
// -encrypt anyone can send one datagram that names a member; one that could
// never be probed (no address, port 0) would otherwise stay alive forever on
// every node and sit in the catalog.
func (d delegate) NotifyAlive(n *memberlist.Node) error {
	if err := validMember(n.Name, n.Addr, n.Port); err != nil {
		d.g.met.memberRejected()
		return err
	}
	return nil
}

func validMember(name string, addr net.IP, port uint16) error {
	switch {
	case name == "":
		return errors.New("gossip: member without a name")
	case len(name) > maxNodeName:
		return fmt.Errorf("gossip: member name of %d bytes (limit %d)", len(name), maxNodeName)
	case !utf8.ValidString(name):
		return fmt.Errorf("gossip: member name %q is not UTF-8", name)
	}
	for _, r := range name {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("gossip: member name %q contains whitespace or control characters", name)
		}
	}
	if len(addr) != net.IPv4len && len(addr) != net.IPv6len || addr.IsUnspecified() || addr.IsMulticast() {
		return fmt.Errorf("gossip: member %q has no usable address (%v)", name, addr)
	}
	if port == 0 {
		return fmt.Errorf("gossip: member %q has port 0", name)
	}
	return nil
}

// reachable reports whether a member answers a memberlist ping at the
// address this node has for it. A live node that is forced out answers, and
// stays: Consul's force-leave of a live node is refuted by the node itself.
func (g *Gossip) reachable(name string, m registry.Member) bool {
	ip := net.ParseIP(m.Addr)
	if validMember(name, ip, uint16(m.Port)) != nil {
		return false
	}
	_, err := g.ml.Ping(name, &net.UDPAddr{IP: ip, Port: m.Port})
	return err == nil
}
