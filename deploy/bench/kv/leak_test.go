package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests: everything a
// test starts is stopped and waited for by the time it returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
