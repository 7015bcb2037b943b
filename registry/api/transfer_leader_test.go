package api_test

import (
	"strings"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// consul operator raft transfer-leader [-id]: through a client, to the
// voter raft picks, then back to a named one; an unknown id and a group of
// one are refused.
func TestRaftTransferLeader(t *testing.T) {
	servers, client := startGroup(t)
	first := leaderOf(servers)
	op := client.client.Operator()
	res, err := op.RaftLeaderTransfer("", nil)
	if err != nil || !res.Success {
		t.Fatalf("transfer-leader: %+v, %v", res, err)
	}
	eventually.True(t, 10*time.Second, "another server leads", func() bool {
		l := leaderOf(servers)
		return l != nil && l != first
	})
	if res, err := op.RaftLeaderTransfer(first.name, nil); err != nil || !res.Success {
		t.Fatalf("transfer-leader -id %s: %+v, %v", first.name, res, err)
	}
	eventually.True(t, 10*time.Second, first.name+" leads again", func() bool { return leaderOf(servers) == first })
	if _, err := op.RaftLeaderTransfer("nobody", nil); err == nil || !strings.Contains(err.Error(), `id "nobody" was not found`) {
		t.Errorf("transfer-leader -id nobody: %v", err)
	}

	one := startSingleServer(t)
	if _, err := one.client.Operator().RaftLeaderTransfer("", nil); err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("transfer-leader in a group of one: %v, want a 500", err)
	}
}
