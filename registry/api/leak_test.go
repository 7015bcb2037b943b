package api_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests: everything a
// test starts is stopped and waited for by the time it returns.
func TestMain(m *testing.M) {
	// The Raft-backed tests run real hashicorp/raft nodes, which leave
	// what registry/raft's TestMain explains.
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
		goleak.IgnoreAnyFunction("github.com/pier-dev/pier/registry/raft.(*Node).wait.func1"),
		// The event tests run real gossip: memberlist's probe of a peer
		// waits out its ack timer (one probe interval) after Shutdown.
		goleak.IgnoreAnyFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	)
}
