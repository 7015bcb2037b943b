package gossip

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests: a node's Run,
// its memberlist and its transport are all stopped by the time a test
// returns.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
