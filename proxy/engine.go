package proxy

import (
	"fmt"
	"runtime"
)

// The engines that serve the plain listener's HTTP/1.1 connections
// (Config.Engine, proxy.engine in the agent's config).
const (
	// EngineGoroutines is fasthttp's own server: a goroutine, and its read
	// and write buffers, for every open connection, idle or not. The
	// default where there is no epoll.
	EngineGoroutines = "goroutines"
	// EngineEventLoop parks idle keep-alive connections in an epoll set of
	// the proxy's own (evloop_linux.go): an idle connection holds no
	// goroutine and no buffer. The loop serves the common request itself,
	// on keep-alive connections of its own to the instances
	// (evloop_fast_linux.go); a goroutine serves the rest. Linux only, and
	// the default there.
	EngineEventLoop = "eventloop"
)

// defaultEngine is the engine of Config.Engine "".
func defaultEngine() string {
	if runtime.GOOS == "linux" {
		return EngineEventLoop
	}
	return EngineGoroutines
}

// ValidateEngine reports an engine name that is not one of the above ("" is
// the default: eventloop on Linux, goroutines elsewhere).
func ValidateEngine(e string) error {
	switch e {
	case "", EngineGoroutines:
		return nil
	case EngineEventLoop:
		if runtime.GOOS != "linux" {
			return fmt.Errorf("engine %q needs Linux (epoll), not %s", e, runtime.GOOS)
		}
		return nil
	}
	return fmt.Errorf("engine %q: want %s or %s", e, EngineGoroutines, EngineEventLoop)
}
