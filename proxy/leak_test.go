package proxy

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// testEngine is the engine newEnv starts proxies with in the current pass.
var testEngine = EngineGoroutines

// testH2Server is the HTTP/2 server newEnv starts proxies with in the
// current pass.
var testH2Server = H2ServerLean

// TestMain runs the package's tests once per engine (PIER_PROXY_ENGINES,
// a comma-separated list; default both on Linux, where the event loop
// runs) and once more per other HTTP/2 server (PIER_PROXY_H2), and fails the run if a goroutine outlives the tests: everything a
// test starts is stopped and waited for by the time it returns.
//
// fasthttp's own goroutines are not ours to stop, and each ends by itself:
// the server's worker pool cleaner and a HostClient's idle-connection
// cleaner sleep out their idle duration (10s) before they see there is
// nothing left to do, and the Date header updater runs for the process.
func TestMain(m *testing.M) {
	flag.Parse()
	engines := []string{EngineGoroutines}
	if runtime.GOOS == "linux" {
		engines = append(engines, EngineEventLoop)
	}
	if e := os.Getenv("PIER_PROXY_ENGINES"); e != "" {
		engines = strings.Split(e, ",")
	}
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		engines = engines[:1] // a fuzz run fuzzes once
	}
	// The HTTP/2 servers (PIER_PROXY_H2, default both) each get a pass
	// with the first engine; the other engines run with the first server.
	h2s := []string{H2ServerLean, H2ServerGo}
	if e := os.Getenv("PIER_PROXY_H2"); e != "" {
		h2s = strings.Split(e, ",")
	}
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		h2s = h2s[:1]
	}
	type pass struct{ engine, h2 string }
	var passes []pass
	for i, e := range engines {
		for j, h := range h2s {
			if i == 0 || j == 0 {
				passes = append(passes, pass{e, h})
			}
		}
	}
	code := 0
	for _, ps := range passes {
		testEngine, testH2Server = ps.engine, ps.h2
		if len(passes) > 1 {
			fmt.Fprintf(os.Stderr, "=== proxy engine: %s, HTTP/2 server: %s\n", ps.engine, ps.h2)
		}
		if c := m.Run(); c != 0 {
			code = c
		}
	}
	if code == 0 {
		err := goleak.Find(
			goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
			goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
			goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		)
		if err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
