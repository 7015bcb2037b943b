// Package eventually is the one way pier's tests wait for something another
// goroutine or process makes true: poll a condition until it holds, and fail
// the test with what was awaited and what was last seen once a bound passes.
// A test never sleeps for a fixed time hoping the condition holds by then.
//
// It lives under deploy, the folder for what is not part of the running
// agent (test backends, benchmark tools), so that the tests of every package
// (cmd, proxy, lb, registry, health, metrics) can import it without an
// import cycle: it imports nothing of pier's.
package eventually

import (
	"testing"
	"time"
)

// The first checks follow each other quickly, so a condition that holds
// soon is seen soon; later ones back off so that a slow one does not spin.
const (
	firstPause = time.Millisecond
	maxPause   = 100 * time.Millisecond
)

// True polls cond until it returns true, and fails t if it has not within
// the bound. what says what was awaited.
func True(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	NoError(t, within, what, func() error {
		if cond() {
			return nil
		}
		return notYet{}
	})
}

// NoError polls cond until it returns nil, and fails t if it has not within
// the bound, with what and the last error cond returned (say what it saw).
func NoError(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	if err := Within(within, cond); err != nil {
		t.Fatalf("%s: not within %v; last: %v", what, within, err)
	}
}

// Within polls cond until it returns nil and returns nil, or returns cond's
// last error once the bound has passed, for callers that do more than fail.
// cond is called at least once, and last after the bound has passed.
func Within(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	pause := firstPause
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(pause)
		pause = min(2*pause, maxPause)
	}
}

type notYet struct{}

func (notYet) Error() string { return "condition false" }
