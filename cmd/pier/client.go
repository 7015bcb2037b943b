package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// client talks to the local agent's HTTP API for the CLI subcommands.
type client struct {
	base  string // http://host:port
	http  *http.Client
	token string // X-Consul-Token; "" sends none
}

// clientFlags are the flags every API subcommand takes.
type clientFlags struct {
	addr   string
	format string
	token  string
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "http-addr", "", "address of the agent's HTTP API (default $PIER_HTTP_ADDR, $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&c.format, "format", "table", "output format: table or json")
	fs.StringVar(&c.token, "token", "", "ACL token sent to the agent (default $PIER_HTTP_TOKEN or $CONSUL_HTTP_TOKEN)")
}

// apiCommand sets up an API subcommand: its own flags (define may add them),
// -http-addr and -format, then parses args and makes the client.
func apiCommand(name string, args []string, stderr io.Writer, define func(*flag.FlagSet)) (*flag.FlagSet, *client, *clientFlags, error) {
	fs := newFlagSet(name)
	cf := &clientFlags{}
	cf.register(fs)
	if define != nil {
		define(fs)
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return nil, nil, nil, err
	}
	c, err := cf.client()
	if err != nil {
		return nil, nil, nil, err
	}
	return fs, c, cf, nil
}

func (c *clientFlags) client() (*client, error) {
	if c.format != "table" && c.format != "json" {
		return nil, usageError{fmt.Sprintf("-format %q: want table or json", c.format)}
	}
	addr := c.addr
	for _, env := range []string{"PIER_HTTP_ADDR", "CONSUL_HTTP_ADDR"} {
		if addr == "" {
			addr = os.Getenv(env)
		}
	}
	if addr == "" {
		addr = "127.0.0.1:8500"
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		return nil, usageError{fmt.Sprintf("-http-addr %q: want host:port or http://host:port", c.addr)}
	}
	tok := c.token
	for _, env := range []string{"PIER_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"} {
		if tok == "" {
			tok = os.Getenv(env)
		}
	}
	return &client{base: strings.TrimRight(u.String(), "/"), http: &http.Client{Timeout: 30 * time.Second}, token: tok}, nil
}

// do sends a request and decodes a 200 answer's JSON into out (if not nil).
// Any other answer becomes an error with the agent's one-line message.
func (c *client) do(method, path string, body any, out any) error {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte: // sent as it is (KV values)
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("X-Consul-Token", c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the agent at %s: %v", c.base, unwrapURLError(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the agent's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return &apiError{Code: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding the agent's answer to %s: %w", path, err)
	}
	return nil
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// apiError is an answer other than 200, with the agent's one-line message.
type apiError struct {
	Code int
	Msg  string
}

func (e *apiError) Error() string { return fmt.Sprintf("the agent answered %d: %s", e.Code, e.Msg) }
