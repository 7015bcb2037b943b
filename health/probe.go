package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/pier-dev/pier/registry"
)

// userAgent is the one Consul sends: applications that filter their health
// endpoint by it keep working.
const userAgent = "Consul Health Check"

// probeHTTP: 2xx is passing, 429 (Too Many Requests) warning, anything else
// or no answer critical, as in Consul. The output carries the first
// OutputMaxSize bytes of the body.
func (r *Runner) probeHTTP(ctx context.Context, client *http.Client, d *registry.CheckDefinition) (registry.Status, string) {
	method := d.Method
	if method == "" {
		method = http.MethodGet
	}
	var body io.Reader
	if d.Body != "" {
		body = strings.NewReader(d.Body)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.HTTP, body)
	if err != nil {
		return registry.StatusCritical, err.Error()
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "text/plain, text/*, */*")
	for k, vs := range d.Header {
		if strings.EqualFold(k, "Host") {
			if len(vs) > 0 {
				req.Host = vs[0]
			}
			continue
		}
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return registry.StatusCritical, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, int64(r.cfg.OutputMaxSize)))
	out := fmt.Sprintf("HTTP %s %s: %s Output: %s", method, d.HTTP, resp.Status, b)
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		return registry.StatusPassing, out
	case resp.StatusCode == http.StatusTooManyRequests:
		return registry.StatusWarning, out
	}
	return registry.StatusCritical, out
}

// probeTCP is passing when a connection to addr is accepted.
func probeTCP(ctx context.Context, addr string) (registry.Status, string) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return registry.StatusCritical, err.Error()
	}
	conn.Close()
	return registry.StatusPassing, fmt.Sprintf("TCP connect %s: Success", addr)
}

func tlsConfig(d registry.CheckDefinition) *tls.Config {
	return &tls.Config{
		ServerName:         d.TLSServerName,
		InsecureSkipVerify: d.TLSSkipVerify, // the user asked for it, for self-signed targets
	}
}
