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
//
// Node.wait's goroutine is a known leak of ours, left as it is here (this
// change is to the tests only) and to be fixed in node.go: hashicorp/raft
// never answers a VerifyLeader queued when it shut down, so wait bounds its
// caller's wait but the goroutine reading the future stays blocked.
// Node.await's goroutine stays the same way when hashicorp/raft shuts
// down with committed entries still queued for the state machine: it
// drops them and never answers their futures (a write in flight while a
// server stops, in the linearizability test).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
		goleak.IgnoreAnyFunction("github.com/pier-dev/pier/registry/raft.(*Node).wait.func1"),
		goleak.IgnoreAnyFunction("github.com/pier-dev/pier/registry/raft.(*Node).await.func1"),
	)
}
