package promsd

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests: the agent and
// Prometheus's discovery are stopped and waited for by then.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
