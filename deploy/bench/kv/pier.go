package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// pier speaks Consul's KV API to one agent over plain net/http, as any
// Consul client would: PUT /v1/kv/k[?cas=N] answers true or false, GET
// /v1/kv/k?consistent a JSON list with the entry's ModifyIndex.
type pier struct {
	base string
	c    *http.Client
	dc   string // "": the endpoint's own datacenter
}

// dcParam is ?dc= (after sep, ? or &) when the requests go to another
// datacenter.
func (p *pier) dcParam(sep string) string {
	if p.dc == "" {
		return ""
	}
	return sep + "dc=" + p.dc
}

func newPier(endpoint string, clients int) *pier {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        2 * clients,
		MaxIdleConnsPerHost: clients, // one kept-alive connection per client: no reconnects in the measurement
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &pier{base: "http://" + endpoint + "/v1/kv/", c: &http.Client{Transport: tr}}
}

func (p *pier) close() { p.c.CloseIdleConnections() }

// do sends one request and returns the status and body, read to the end so
// that the connection is reused.
func (p *pier) do(ctx context.Context, method, url string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	resp, err := p.c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

func (p *pier) write(ctx context.Context, url string, val []byte) (bool, error) {
	code, b, err := p.do(ctx, http.MethodPut, url, val)
	if err != nil {
		return false, err
	}
	if code != http.StatusOK {
		return false, fmt.Errorf("PUT answered %d: %s", code, firstLine(b))
	}
	switch strings.TrimSpace(string(b)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("PUT answered %q, not true or false", firstLine(b))
}

func (p *pier) put(ctx context.Context, key string, val []byte) error {
	ok, err := p.write(ctx, p.base+key+p.dcParam("?"), val)
	if err == nil && !ok {
		err = fmt.Errorf("PUT %s answered false", key)
	}
	return err
}

func (p *pier) cas(ctx context.Context, key string, val []byte, rev int64) (bool, error) {
	return p.write(ctx, p.base+key+"?cas="+strconv.FormatInt(rev, 10)+p.dcParam("&"), val)
}

func (p *pier) get(ctx context.Context, key string) (int64, error) {
	code, b, err := p.do(ctx, http.MethodGet, p.base+key+"?consistent"+p.dcParam("&"), nil)
	if err != nil {
		return 0, err
	}
	switch code {
	case http.StatusNotFound:
		return 0, nil
	case http.StatusOK:
	default:
		return 0, fmt.Errorf("GET answered %d: %s", code, firstLine(b))
	}
	var entries []struct{ ModifyIndex int64 }
	if err := json.Unmarshal(b, &entries); err != nil || len(entries) != 1 {
		return 0, fmt.Errorf("GET answered %s (%v)", firstLine(b), err)
	}
	return entries[0].ModifyIndex, nil
}

// pierLeader asks every agent for the leader (GET /v1/status/leader) and
// maps the answer back to an endpoint. The answer is a server's Raft
// address, which is not the HTTP endpoint, so each agent is matched by
// every address it may be known by: the server address the script gave it
// (-server-addrs), Consul's "port" member tag (the server port) and its
// gossip address (what a gossip-only agent names today, itself).
func pierLeader(ctx context.Context, endpoints, servers []string) (int, string, bool, error) {
	named := make([]string, len(endpoints))
	known := make([][]string, len(endpoints))
	for i, ep := range endpoints {
		p := newPier(ep, 1)
		defer p.close()
		code, b, err := p.do(ctx, http.MethodGet, "http://"+ep+"/v1/status/leader", nil)
		if err != nil || code != http.StatusOK {
			return -1, "", false, fmt.Errorf("%s /v1/status/leader: %d %v %s", ep, code, err, firstLine(b))
		}
		if err := json.Unmarshal(b, &named[i]); err != nil {
			return -1, "", false, fmt.Errorf("%s /v1/status/leader answered %s", ep, firstLine(b))
		}
		if i < len(servers) {
			known[i] = append(known[i], servers[i])
		}
		code, b, err = p.do(ctx, http.MethodGet, "http://"+ep+"/v1/agent/self", nil)
		if err != nil || code != http.StatusOK {
			return -1, "", false, fmt.Errorf("%s /v1/agent/self: %d %v", ep, code, err)
		}
		var self struct {
			Member struct {
				Addr string
				Port int
				Tags map[string]string
			}
		}
		if err := json.Unmarshal(b, &self); err != nil {
			return -1, "", false, fmt.Errorf("%s /v1/agent/self: %v", ep, err)
		}
		m := self.Member
		if port := m.Tags["port"]; port != "" {
			known[i] = append(known[i], net.JoinHostPort(m.Addr, port))
		}
		known[i] = append(known[i], net.JoinHostPort(m.Addr, strconv.Itoa(m.Port)))
	}
	agree := true
	for _, n := range named {
		agree = agree && n == named[0]
	}
	if named[0] == "" {
		return -1, "", agree, fmt.Errorf("%s knows no leader", endpoints[0])
	}
	for i, addrs := range known {
		for _, a := range addrs {
			if a == named[0] {
				return i, named[0], agree, nil
			}
		}
	}
	return -1, named[0], agree, fmt.Errorf("leader %s is none of %v", named[0], known)
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
