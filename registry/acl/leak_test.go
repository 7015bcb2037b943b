package acl

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests (replication
// runs loops of its own).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
