package raft

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a goroutine outlives the tests: everything a
// test starts is stopped and waited for by the time it returns.
//
// hashicorp/raft's NetworkTransport.Close closes its listener but not the
// connections it accepted nor its pool of outgoing ones (CloseStreams
// does), so after a group stops, a server's handler of a peer's pooled
// connection still waits in a read until the process ends.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
	)
}
