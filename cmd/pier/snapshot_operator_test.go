package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

func runCLI(t *testing.T, f func([]string, io.Writer, io.Writer) error, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := f(args, &out, &errb)
	return out.String(), errb.String(), err
}

// pier snapshot save writes an archive that verifies and says its index;
// restore brings the state back (a key changed and one deleted since);
// a file that is not an archive is refused and changes nothing.
func TestSnapshotSaveRestore(t *testing.T) {
	s := startRaftServers(t, 1)[0]
	kv := s.client.KV()
	for k, v := range map[string]string{"app/a": "1", "app/b": "2"} {
		if _, err := kv.Put(&consul.KVPair{Key: k, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "backup.snap")
	snap := runSnapshot
	out, _, err := runCLI(t, snap, "save", "-http-addr", s.addr, file)
	if err != nil || !regexp.MustCompile(`^Saved and verified snapshot to index [1-9][0-9]*\n$`).MatchString(out) {
		t.Fatalf("save: %q %v", out, err)
	}
	if _, err := os.Stat(file + ".unverified"); !os.IsNotExist(err) {
		t.Fatalf("the unverified file is left: %v", err)
	}
	if _, err := kv.Put(&consul.KVPair{Key: "app/a", Value: []byte("changed")}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Delete("app/b", nil); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, snap, "restore", "-http-addr", s.addr, file)
	if err != nil || out != "Restored snapshot\n" {
		t.Fatalf("restore: %q %v", out, err)
	}
	for k, want := range map[string]string{"app/a": "1", "app/b": "2"} {
		p, _, err := kv.Get(k, nil)
		if err != nil || p == nil || string(p.Value) != want {
			t.Fatalf("%s after restore: %+v %v", k, p, err)
		}
	}

	bad := filepath.Join(dir, "bad.snap")
	os.WriteFile(bad, []byte("not an archive"), 0o600)
	if _, _, err := runCLI(t, snap, "restore", "-http-addr", s.addr, bad); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("restoring a bad file: %v", err)
	}
	if p, _, _ := kv.Get("app/a", nil); p == nil || string(p.Value) != "1" {
		t.Fatalf("a bad restore changed the state: %+v", p)
	}
	for _, args := range [][]string{{"save"}, {"save", "a", "b"}, {"restore"}, {"inspect", "x"}, {}} {
		if _, _, err := runCLI(t, snap, args...); err == nil {
			t.Errorf("%q: no error", args)
		} else if _, ok := err.(usageError); !ok {
			t.Errorf("%q: %v is not a usage error", args, err)
		}
	}
	if _, _, err := runCLI(t, snap, "save", "-http-addr", s.addr, filepath.Join(dir, "no", "such", "dir")); err == nil {
		t.Error("saving into a missing directory: no error")
	}
}

// pier operator raft list-peers prints consul's table; remove-peer takes a
// follower out by ID, then another by address; an unknown one is the
// server's error line.
func TestOperatorRaft(t *testing.T) {
	servers := startRaftServers(t, 3)
	leader := raftLeader(servers)
	op := runOperator
	out, _, err := runCLI(t, op, "raft", "list-peers", "-http-addr", leader.addr)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "Node ID Address State Voter RaftProtocol" {
		t.Fatalf("list-peers:\n%s", out)
	}
	var followers []*raftTestServer
	for _, s := range servers {
		if s != leader {
			followers = append(followers, s)
		}
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 6 || f[5] != "3" || f[4] != "true" {
			t.Fatalf("row %q of:\n%s", l, out)
		}
		if want := map[bool]string{true: "leader", false: "follower"}[f[1] == leader.name]; f[3] != want {
			t.Fatalf("row %q: want state %s", l, want)
		}
	}

	out, _, err = runCLI(t, op, "raft", "remove-peer", "-http-addr", leader.addr, "-id", followers[0].name)
	if err != nil || out != `Removed peer with id "`+followers[0].name+`"`+"\n" {
		t.Fatalf("remove-peer -id: %q %v", out, err)
	}
	out, _, err = runCLI(t, op, "raft", "remove-peer", "-http-addr", leader.addr, "-address="+followers[1].node.Addr())
	if err != nil || !strings.HasPrefix(out, "Removed peer with address") {
		t.Fatalf("remove-peer -address: %q %v", out, err)
	}
	eventually.True(t, 10*time.Second, "one server left", func() bool {
		out, _, err = runCLI(t, op, "raft", "list-peers", "-http-addr", leader.addr)
		return err == nil && len(strings.Split(strings.TrimSpace(out), "\n")) == 2
	})
	if !strings.Contains(out, leader.name) || !strings.Contains(out, "leader") {
		t.Fatalf("list-peers after the removals:\n%s", out)
	}
	if _, _, err := runCLI(t, op, "raft", "remove-peer", "-http-addr", leader.addr, "-id", "nobody"); err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("removing an unknown id: %v", err)
	}
	for _, args := range [][]string{{"raft", "remove-peer"}, {"raft", "remove-peer", "-id", "a", "-address", "b"}, {"raft"}, {"raft", "transfer-leader"}, {}} {
		if _, _, err := runCLI(t, op, args...); err == nil {
			t.Errorf("%q: no error", args)
		} else if _, ok := err.(usageError); !ok {
			t.Errorf("%q: %v is not a usage error", args, err)
		}
	}
}
