package gossip

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests: a node's Run,
// its memberlist and its transport are all stopped by the time a test
// returns. Memberlist's probe of a peer is the exception: it waits out its
// ack timer (one probe interval) after Shutdown, so a run whose last test
// stopped a node mid-probe found it (2 of 6 runs of one test alone, on
// b40825a already); registry/api ignores it too.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}
