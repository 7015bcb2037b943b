//go:build !linux

package proxy

import (
	"context"
	"errors"
	"net"

	"github.com/valyala/fasthttp"
)

// loop is the event-loop engine, which needs epoll: ValidateEngine refuses
// it elsewhere, so these are never reached.
type loop struct{}

func newLoop(*Proxy, *fasthttp.Server) (*loop, error) {
	return nil, errors.New("proxy: the eventloop engine needs Linux")
}

func (l *loop) serve(net.Listener) error { return nil }
func (l *loop) shutdown(context.Context) {}
func (l *loop) stopAccept()              {}
func (l *loop) openConns() int64         { return 0 }
