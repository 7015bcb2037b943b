// Package h2xconnect turns on RFC 8441's extended CONNECT (WebSocket over
// HTTP/2) in Go's HTTP/2 server, net/http's bundled one and x/net/http2's
// alike. Both have it behind GODEBUG=http2xconnect=1, read from the
// environment once, in their package init (golang/go#71128 keeps it off by
// default). A blank import of this package sets it before they read it:
// Go initializes packages in import-path order among those whose imports
// are done, and this one needs only os and strings, which net/http and
// golang.org/x/net/http2 import too, and sorts before both. A GODEBUG that
// already says http2xconnect (=0 to keep it off) is left as it is.
//
// The setting is process-wide: every HTTP/2 server in the process then
// advertises SETTINGS_ENABLE_CONNECT_PROTOCOL and hands extended CONNECT
// streams to its handler, and child processes inherit the variable.
package h2xconnect

import (
	"os"
	"strings"
)

func init() {
	g := os.Getenv("GODEBUG")
	if strings.Contains(g, "http2xconnect=") {
		return
	}
	if g != "" {
		g += ","
	}
	os.Setenv("GODEBUG", g+"http2xconnect=1")
}
