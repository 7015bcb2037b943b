package api_test

import (
	"strings"
	"testing"

	consul "github.com/hashicorp/consul/api"
)

// consul exec's first write is its job's session; pier refuses it there,
// saying remote exec is disabled, instead of a 404.
func TestRemoteExecRefused(t *testing.T) {
	a := startAgentWith(t, nil)
	for _, name := range []string{"Remote Exec", "Remote Exec via node1@dc2"} {
		_, _, err := a.client.Session().Create(&consul.SessionEntry{Name: name, Behavior: consul.SessionBehaviorDelete, TTL: "15s"}, nil)
		if err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "remote exec is disabled") {
			t.Errorf("session %q: %v, want 403 remote exec is disabled", name, err)
		}
	}
}
