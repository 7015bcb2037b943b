package dns

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/pier-dev/pier/registry"
)

// TestNamedPort: Consul 1.22's <port-name>.port form picks a multi-port
// service's named port in SRV answers; instances without that port are
// left out, and a name no instance has is NXDOMAIN.
func TestNamedPort(t *testing.T) {
	reg := newRegistry(t)
	ports := func(http, admin int) []registry.ServicePort {
		ps := []registry.ServicePort{{Name: "http", Port: http, Default: true}}
		if admin != 0 {
			ps = append(ps, registry.ServicePort{Name: "admin", Port: admin})
		}
		return ps
	}
	register(t, reg, registry.Service{ID: "app1", Name: "app", Address: "10.0.0.1", Port: 8080, Ports: ports(8080, 9090)})
	register(t, reg, registry.Service{ID: "app2", Name: "app", Address: "10.0.0.2", Port: 8081, Ports: ports(8081, 0)})
	s := start(t, reg, nil)

	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		want  []string
	}{
		{"app.service.admin.port.consul.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"SRV 0a000001.addr.dc1.consul. 9090 1"}},
		{"_app._tcp.service.admin.port.consul.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"SRV 0a000001.addr.dc1.consul. 9090 1"}},
		{"app.service.ADMIN.port.dc1.dc.consul.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"SRV 0a000001.addr.dc1.consul. 9090 1"}},
		{"app.service.http.port.consul.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"SRV 0a000001.addr.dc1.consul. 8080 1", "SRV 0a000002.addr.dc1.consul. 8081 1"}},
		{"app.service.consul.", mdns.TypeSRV, mdns.RcodeSuccess, []string{"SRV 0a000001.addr.dc1.consul. 8080 1", "SRV 0a000002.addr.dc1.consul. 8081 1"}},
		{"app.service.admin.port.consul.", mdns.TypeA, mdns.RcodeSuccess, []string{"A 10.0.0.1"}},
		{"app.service.grpc.port.consul.", mdns.TypeSRV, mdns.RcodeNameError, nil},
		{"app.service.admin.port.dc2.dc.consul.", mdns.TypeSRV, mdns.RcodeNameError, nil},
		{"helloworld.node.admin.port.consul.", mdns.TypeA, mdns.RcodeNameError, nil},
		{"app.service.admin.nope.consul.", mdns.TypeSRV, mdns.RcodeNameError, nil},
	} {
		r := ask(t, s.addr, "udp", tc.name, tc.qtype, 0)
		got := answers(r.Answer)
		slices.Sort(got)
		if r.Rcode != tc.rcode || !slices.Equal(got, tc.want) {
			t.Errorf("%s %s: %s %v, want %s %v", tc.name, mdns.TypeToString[tc.qtype], mdns.RcodeToString[r.Rcode], got, mdns.RcodeToString[tc.rcode], tc.want)
		}
	}
	if _, err := exec.LookPath("dig"); err == nil {
		out := strings.TrimSpace(dig(t, s.addr, "app.service.admin.port.consul", "SRV", "+short"))
		if out != "1 1 9090 0a000001.addr.dc1.consul." {
			t.Errorf("dig app.service.admin.port.consul SRV +short: %q", out)
		}
	}
}
