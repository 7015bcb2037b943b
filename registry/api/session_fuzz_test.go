package api

import (
	"slices"
	"strings"
	"testing"

	"github.com/pier-dev/pier/registry/raft"
)

// FuzzSessionBody: /v1/session/create's body. A refusal is one line; an
// accepted body is a session the state machine accepts: a TTL ParseTTL
// takes, a known behaviour, a lock delay not negative, a node, node checks
// listed once.
func FuzzSessionBody(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `null`, `{"TTL":"10s","Behavior":"delete","LockDelay":"5s"}`, `{"LockDelay":15}`,
		`{"Checks":[]}`, `{"Checks":["a","a"],"NodeChecks":["a","serfHealth"]}`, `{"Node":"n","ServiceChecks":[{"ID":"x"}]}`,
		`{"TTL":"1s"}`, `{"LockDelay":-1}`, `{"Behavior":"keep"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := decodeSession(body, "self")
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("a message of more than one line: %q", err)
			}
			return
		}
		if _, err := raft.ParseTTL(s.TTL); err != nil {
			t.Fatalf("TTL %q accepted: %v", s.TTL, err)
		}
		if s.Behavior != raft.BehaviorRelease && s.Behavior != raft.BehaviorDelete {
			t.Fatalf("behaviour %q accepted", s.Behavior)
		}
		if s.LockDelay < 0 || s.Node == "" || s.NodeChecks == nil {
			t.Fatalf("accepted %+v", s)
		}
		for i, c := range s.NodeChecks {
			if slices.Contains(s.NodeChecks[i+1:], c) {
				t.Fatalf("check %q listed twice: %v", c, s.NodeChecks)
			}
		}
	})
}
