//go:build !linux

package proxy

import (
	"context"
	"errors"
	"net"

	"github.com/valyala/fasthttp"
)

// loopGroup is the event-loop engine, which needs epoll: ValidateEngine
// refuses it elsewhere, so these are never reached.
type loopGroup struct{}

func newLoopGroup(*Proxy, *fasthttp.Server, int) (*loopGroup, error) {
	return nil, errors.New("proxy: the eventloop engine needs Linux")
}

func (g *loopGroup) serve(net.Listener) error { return nil }
func (g *loopGroup) shutdown(context.Context) {}
func (g *loopGroup) stopAccept()              {}
func (g *loopGroup) openConns() int64         { return 0 }
