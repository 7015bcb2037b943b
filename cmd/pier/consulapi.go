package main

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"

	consul "github.com/hashicorp/consul/api"
)

// The lock, snapshot and operator subcommands use the consul/api client
// (its Lock and Semaphore keep Consul's key layout, so that other users of
// consul/api on the same prefix interoperate), pointed where the CLI's
// own client points, with the same token.

func (c *client) consul() (*consul.Client, error) { return c.consulWith(nil) }

// consulWith is consul with the given HTTP client (nil: consul/api's,
// which reads Consul's CONSUL_CACERT and other TLS variables).
func (c *client) consulWith(hc *http.Client) (*consul.Client, error) {
	u, err := url.Parse(c.base)
	if err != nil {
		return nil, err
	}
	return consul.NewClient(&consul.Config{Address: u.Host, Scheme: u.Scheme, Token: c.token, HttpClient: hc})
}

// consulErr turns the consul/api client's errors into the CLI's one line:
// an answer other than 200 reads as the agent's message (apiError), as the
// other subcommands print it.
func (c *client) consulErr(err error) error {
	var se consul.StatusError
	if errors.As(err, &se) {
		return &apiError{Code: se.Code, Msg: se.Body}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("cannot reach the agent at %s: %v", c.base, ue.Err)
	}
	return err
}
