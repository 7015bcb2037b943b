package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests: everything a
// test starts is stopped and waited for by the time it returns.
//
// fasthttp's own goroutines are not ours to stop, and each ends by itself:
// the server's worker pool cleaner and a HostClient's idle-connection
// cleaner sleep out their idle duration (10s) before they see there is
// nothing left to do, and the Date header updater runs for the process.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
	)
}
