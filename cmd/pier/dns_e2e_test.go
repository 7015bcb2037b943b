package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

var dnsLine = regexp.MustCompile(` dns=([0-9.:]+)`)

func requireDig(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig is not installed (Debian's dnsutils; .ci/run installs it)")
	}
}

// digAt runs the real dig against the agent's DNS address, in the seed's
// argument order (name first, then @server -p port).
func digAt(t *testing.T, addr string, args ...string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("the agent logged no DNS address (%q)", addr)
	}
	all := append(args, "@"+host, "-p", port, "+time=10", "+tries=1")
	out, err := exec.Command("dig", all...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %s: %v\n%s", strings.Join(all, " "), err, out)
	}
	return string(out)
}

// TestDNSSeedWalkthrough runs the talk's dig commands against the built
// binary: the node by name over TCP, then redis after registering it.
func TestDNSSeedWalkthrough(t *testing.T) {
	requireCurl(t)
	requireDig(t)
	a := startAgent(t, "-dev", "-node", "helloworld", "-proxy-addr", "127.0.0.1:0")

	out := digAt(t, a.dns, "helloworld.node.consul", "+tcp")
	if !regexp.MustCompile(`(?m)^helloworld\.node\.consul\.\s+0\s+IN\s+A\s+127\.0\.0\.1$`).MatchString(out) || !strings.Contains(out, "(TCP)") {
		t.Errorf("dig helloworld.node.consul +tcp:\n%s", out)
	}
	if got := strings.TrimSpace(digAt(t, a.dns, "consul.service.consul", "+short")); got != "127.0.0.1" {
		t.Errorf("dig consul.service.consul: %q, want the node's address", got)
	}

	code, body := curl(t, "-X", "POST", "-d", `{"ID":"redis1","Name":"redis","Tags":["master","v1"],"Address":"172.16.0.2","Port":8000}`,
		"http://"+a.addr+"/v1/agent/service/register")
	if code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	out = digAt(t, a.dns, "redis.service.consul")
	if !regexp.MustCompile(`(?m)^redis\.service\.consul\.\s+0\s+IN\s+A\s+172\.16\.0\.2$`).MatchString(out) || !strings.Contains(out, "status: NOERROR") {
		t.Errorf("dig redis.service.consul:\n%s", out)
	}
	if got := strings.TrimSpace(digAt(t, a.dns, "_redis._master.service.consul", "SRV", "+short")); got != "1 1 8000 ac100002.addr.dc1.consul." {
		t.Errorf("dig _redis._master.service.consul SRV: %q", got)
	}
	if out := digAt(t, a.dns, "nothere.service.consul"); !strings.Contains(out, "status: NXDOMAIN") {
		t.Errorf("dig nothere.service.consul:\n%s", out)
	}
	// Deregistered: gone from DNS at once.
	if _, errOut, rc := pier(t, "deregister", "-http-addr", a.addr, "redis1"); rc != 0 {
		t.Fatalf("deregister: %s", errOut)
	}
	if out := digAt(t, a.dns, "redis.service.consul"); !strings.Contains(out, "status: NXDOMAIN") {
		t.Errorf("after deregistering:\n%s", out)
	}
}

// TestDNSConfig: the DNS flags and config keys reach the server: domain,
// ports.dns, dns_config (service_ttl keyed by service names as written) and
// -recursor.
func TestDNSConfig(t *testing.T) {
	requireDig(t)
	up := startUpstream(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(`
domain: pier.internal
ports: {dns: 0}
recursors: ["192.0.2.1"]
dns_config:
  allow_stale: true
  only_passing: true
  node_ttl: 10s
  service_ttl: {"*": 5s, "web-api": 1s}
  udp_answer_limit: 2
  enable_truncate: false
services:
  - {id: w1, name: web-api, port: 80, address: 10.0.0.1}
  - {id: w2, name: web-api, port: 80, address: 10.0.0.2}
  - {id: w3, name: web-api, port: 80, address: 10.0.0.3}
  - {id: d1, name: db, port: 5432}
`), 0o600)
	// -recursor on the command line replaces the file's recursors.
	a := startAgent(t, "-dev", "-node", "n1", "-config-file", cfg, "-recursor", up, "-proxy-addr", "127.0.0.1:0")

	out := digAt(t, a.dns, "web-api.service.pier.internal", "+noedns", "+ignore")
	if !regexp.MustCompile(`web-api\.service\.pier\.internal\.\s+1\s+IN\s+A`).MatchString(out) || !strings.Contains(out, "ANSWER: 2,") || strings.Contains(out, " tc") {
		t.Errorf("service_ttl web-api 1s, udp_answer_limit 2, no TC:\n%s", out)
	}
	if out := digAt(t, a.dns, "db.service.pier.internal"); !regexp.MustCompile(`db\.service\.pier\.internal\.\s+5\s+IN\s+A\s+127\.0\.0\.1`).MatchString(out) {
		t.Errorf("service_ttl *:\n%s", out)
	}
	if out := digAt(t, a.dns, "n1.node.pier.internal"); !regexp.MustCompile(`n1\.node\.pier\.internal\.\s+10\s+IN\s+A\s+127\.0\.0\.1`).MatchString(out) {
		t.Errorf("node_ttl:\n%s", out)
	}
	if got := strings.TrimSpace(digAt(t, a.dns, "upstream.example", "+short")); got != "192.0.2.77" {
		t.Errorf("forwarded to -recursor: %q", got)
	}
}

// startUpstream runs a one-record DNS server standing in for a recursor.
func startUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if strings.EqualFold(r.Question[0].Name, "upstream.example.") && r.Question[0].Qtype == mdns.TypeA {
			rr, _ := mdns.NewRR("upstream.example. 60 IN A 192.0.2.77")
			m.Answer = []mdns.RR{rr}
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() { srv.ActivateAndServe(); close(done) }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); <-done })
	return pc.LocalAddr().String()
}

func TestDNSBadStart(t *testing.T) {
	a := startAgent(t, "-dev", "-proxy-addr", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(a.dns)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-dns-port", "70000"}, 2, "-dns-port"},
		{[]string{"-dns-allow", "everyone"}, 2, "-dns-allow"},
		{[]string{"-dns-port", "0", "-recursor", "dns.google"}, 2, "-recursor"},
		{[]string{"-dns-port", "0", "-domain", "a..b"}, 2, "-domain"},
		{[]string{"-dns-port", port}, 1, "dns: listen tcp " + a.dns + ": bind: address already in use"},
	} {
		c.args = append([]string{"agent", "-dev", "-http-port", "0", "-serf-lan-port", "0", "-proxy-addr", "127.0.0.1:0"}, c.args...)
		_, errOut, code := pier(t, c.args...)
		if c.code == 1 { // a start that failed at run time: the log has begun, the last line says why
			errOut = errOut[strings.LastIndexByte(strings.TrimSuffix(errOut, "\n"), '\n')+1:]
		}
		if code != c.code || !strings.Contains(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("pier %v: exit %d, stderr %q; want exit %d and one line with %q", c.args, code, errOut, c.code, c.want)
		}
	}
}
