//go:build !linux

package proxy

import (
	"errors"
	"net"

	"github.com/pier-dev/pier/lb"
)

// tcpLoops is the event-loop engine's TCP routes, which need epoll:
// ValidateEngine refuses the engine elsewhere, so these are never reached.
type tcpLoops struct{}

func newTCPLoops(*TCPProxy) (*tcpLoops, error) {
	return nil, errors.New("proxy: the eventloop engine needs Linux")
}

func listenLoop(string, *tcpLoops) (net.Listener, error) {
	return nil, errors.New("proxy: the eventloop engine needs Linux")
}

func (ls *tcpLoops) start()                             {}
func (ls *tcpLoops) stop()                              {}
func (ls *tcpLoops) addListener(*tcpListener)           {}
func (ls *tcpLoops) open(map[*tcpRoute]int)             {}
func (ls *tcpLoops) sync(*lb.Table, map[*tcpRoute]bool) {}
