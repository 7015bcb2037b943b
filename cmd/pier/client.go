package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
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
	fs, cf, err := apiFlags(name, args, stderr, define)
	if err != nil {
		return nil, nil, nil, err
	}
	c, err := cf.client()
	if err != nil {
		return nil, nil, nil, err
	}
	return fs, c, cf, nil
}

// apiFlags is apiCommand without the client, for the subcommands that check
// their own flags first: cf.client() makes it.
func apiFlags(name string, args []string, stderr io.Writer, define func(*flag.FlagSet)) (*flag.FlagSet, *clientFlags, error) {
	fs := newFlagSet(name)
	cf := &clientFlags{}
	cf.register(fs)
	if define != nil {
		define(fs)
	}
	if err := parseFlags(fs, args, stderr); err != nil {
		return nil, nil, err
	}
	return fs, cf, nil
}

// listCommand is an API subcommand without flags of its own that GETs path
// and prints the answer: as JSON with -format json, else with table.
func listCommand[T any](name, path string, args []string, stdout, stderr io.Writer, table func(T) error) error {
	_, c, cf, err := apiCommand(name, args, stderr, nil)
	if err != nil {
		return err
	}
	var v T
	if err := c.do("GET", path, nil, &v); err != nil {
		return err
	}
	if cf.format == "json" {
		return printJSON(stdout, v)
	}
	return table(v)
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
	resp, err := c.open(context.Background(), c.http, method, path, rd)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return fmt.Errorf("reading the agent's answer: %w", err)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding the agent's answer to %s: %w", path, err)
	}
	return nil
}

// maxAnswer bounds what the CLI reads of one answer of the agent.
const maxAnswer = 64 << 20

// open sends a request with the token through hc and answers the response
// if it is a 200; any other answer becomes an apiError with the agent's
// one-line message.
func (c *client) open(ctx context.Context, hc *http.Client, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("X-Consul-Token", c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the agent at %s: %v", c.base, unwrapURLError(err))
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		if err != nil {
			return nil, fmt.Errorf("reading the agent's answer: %w", err)
		}
		return nil, &apiError{Code: resp.StatusCode, Msg: strings.TrimSpace(string(b))}
	}
	return resp, nil
}

func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// newTable starts a table in aligned columns, with its tab-separated header
// line if not "".
func newTable(w io.Writer, header string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header != "" {
		fmt.Fprintln(tw, header)
	}
	return tw
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

// isStatus reports whether err is the agent's answer with code.
func isStatus(err error, code int) bool {
	var ae *apiError
	return errors.As(err, &ae) && ae.Code == code
}

func (e *apiError) Error() string { return fmt.Sprintf("the agent answered %d: %s", e.Code, e.Msg) }
