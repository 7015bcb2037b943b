package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// freePort is the port of freeLoopback.
func freePort(t *testing.T) int {
	_, p, _ := net.SplitHostPort(freeLoopback(t))
	n, _ := strconv.Atoi(p)
	return n
}

// startRedis runs redis-server on a free loopback port, without
// persistence, and returns the port.
func startRedis(t *testing.T) int {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed (Debian: apt-get install redis-server)")
	}
	port := freePort(t)
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually.True(t, 10*time.Second, "redis-server listens", func() bool {
		c, err := net.Dial("tcp", fmt.Sprint("127.0.0.1:", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return port
}

// redisDo sends one command in RESP and returns the first line of the reply.
func redisDo(c net.Conn, r *bufio.Reader, args ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(line, "$") && line != "$-1\r\n" {
		line, err = r.ReadString('\n')
	}
	return strings.TrimSpace(line), err
}

// TestTCPRouteRedis runs the binary with a TCP route from the config file
// and one from a fabio-style tag, each to a real redis-server, and speaks
// redis's protocol through both, on each proxy engine.
func TestTCPRouteRedis(t *testing.T) {
	needBinary(t)
	for _, engine := range []string{"goroutines", "eventloop"} {
		t.Run(engine, func(t *testing.T) { testTCPRouteRedis(t, engine) })
	}
}

func testTCPRouteRedis(t *testing.T, engine string) {
	r1, r2 := startRedis(t), startRedis(t)
	cfgPort, tagPort := freePort(t), freePort(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
proxy:
  addr: 127.0.0.1:0
  engine: %s
  tcp:
    - listen: 127.0.0.1:%d
      service: redis
  tcp_idle_timeout: 1m
services:
  - id: redis-1
    name: redis
    address: 127.0.0.1
    port: %d
  - id: cache-1
    name: cache
    address: 127.0.0.1
    port: %d
    tags: ["urlprefix-:%d proto=tcp"]
`, engine, cfgPort, r1, r2, tagPort)), 0o600)
	a := startAgent(t, "-dev", "-node", "tcp", "-config-file", cfg)
	for _, tc := range []struct {
		port int
		val  string
	}{{cfgPort, "from-config"}, {tagPort, "from-tag"}} {
		var c net.Conn
		eventually.True(t, 15*time.Second, fmt.Sprint("the route on port ", tc.port, " answers"), func() bool {
			var err error
			if c, err = net.Dial("tcp", fmt.Sprint("127.0.0.1:", tc.port)); err != nil {
				return false
			}
			if got, err := redisDo(c, bufio.NewReader(c), "PING"); err != nil || got != "+PONG" {
				c.Close()
				return false
			}
			return true
		})
		r := bufio.NewReader(c)
		if got, err := redisDo(c, r, "SET", "k", tc.val); err != nil || got != "+OK" {
			t.Fatalf("SET: %q %v\n%s", got, err, a.logs())
		}
		if got, err := redisDo(c, r, "GET", "k"); err != nil || got != tc.val {
			t.Fatalf("GET: %q %v", got, err)
		}
		c.Close()
	}
	// Each route reached its own redis: the values did not mix.
	c, err := net.Dial("tcp", fmt.Sprint("127.0.0.1:", r2))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, _ := redisDo(c, bufio.NewReader(c), "GET", "k"); got != "from-tag" {
		t.Errorf("the tag's redis holds %q", got)
	}
	out, errOut, rc := pier(t, "routes", "-http-addr", a.addr)
	for _, re := range []string{
		fmt.Sprintf(`127\.0\.0\.1:%d\s+redis\s+config\s+0\s+1/1\s+127\.0\.0\.1:%d`, cfgPort, r1),
		fmt.Sprintf(`127\.0\.0\.1:%d\s+cache\s+tag\s+0\s+1/1\s+127\.0\.0\.1:%d`, tagPort, r2),
	} {
		if rc != 0 || !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("pier routes: rc=%d, no line matching %s:\n%s%s", rc, re, out, errOut)
		}
	}
	code, body := curl(t, "http://"+a.addr+"/v1/agent/metrics?format=prometheus")
	if code != 200 || !strings.Contains(body, fmt.Sprintf(`pier_proxy_tcp_connections_total{route="127.0.0.1:%d",service="redis"}`, cfgPort)) {
		t.Errorf("metrics: %d, no tcp_connections_total for the config route", code)
	}
}

var proxyTLSLine = regexp.MustCompile(`msg="pier agent running".* proxy_tls=([0-9.:]+)`)

// selfSigned is a certificate for name that is its own root.
func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}, c
}

// TestSNIPassthroughAgent runs the binary with HTTPS on the front door and
// an instance that terminates TLS itself, reached through a proto=tcp+sni
// tag on the same port: the client verifies the instance's certificate,
// not pier's.
func TestSNIPassthroughAgent(t *testing.T) {
	needBinary(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	cert, root := selfSigned(t, "db.test")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); fmt.Fprintln(c, "db says hi") }()
		}
	}()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
proxy:
  addr: 127.0.0.1:0
  tls:
    addr: 127.0.0.1:0
    certs:
      - {cert_file: %q, key_file: %q}
services:
  - id: db-1
    name: db
    address: 127.0.0.1
    port: %d
    tags: ["urlprefix-db.test proto=tcp+sni"]
`, pki.certFile, pki.keyFile, ln.Addr().(*net.TCPAddr).Port)), 0o600)
	a := startAgent(t, "-dev", "-node", "sni", "-config-file", cfg)
	m := proxyTLSLine.FindStringSubmatch(a.logs())
	if m == nil {
		t.Fatalf("no proxy_tls= in the log:\n%s", a.logs())
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	var line string
	eventually.True(t, 15*time.Second, "db.test passes through to the instance", func() bool {
		c, err := tls.Dial("tcp", m[1], &tls.Config{ServerName: "db.test", RootCAs: roots})
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ = bufio.NewReader(c).ReadString('\n')
		return line == "db says hi\n"
	})
	// Pier's own certificate still answers on the same port.
	c, err := tls.Dial("tcp", m[1], &tls.Config{RootCAs: pki.pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("pier's own TLS: %v", err)
	}
	c.Close()
}
