package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// freePort returns a loopback port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
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
// redis's protocol through both.
func TestTCPRouteRedis(t *testing.T) {
	needBinary(t)
	r1, r2 := startRedis(t), startRedis(t)
	cfgPort, tagPort := freePort(t), freePort(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pier.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
proxy:
  addr: 127.0.0.1:0
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
`, cfgPort, r1, r2, tagPort)), 0o600)
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
	code, body := curl(t, "http://"+a.addr+"/v1/agent/metrics?format=prometheus")
	if code != 200 || !strings.Contains(body, fmt.Sprintf(`pier_proxy_tcp_connections_total{route="127.0.0.1:%d",service="redis"}`, cfgPort)) {
		t.Errorf("metrics: %d, no tcp_connections_total for the config route", code)
	}
}
