package acl

import (
	"bytes"
	"os"
	"testing"
)

// Tokens are compared with crypto/subtle, never with ==, so a guess's
// timing does not tell how much of it was right.
func TestACLConstantTimeCompare(t *testing.T) {
	src, err := os.ReadFile("authorizer.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(src, []byte("subtle.ConstantTimeCompare(")) {
		t.Error("authorizer.go does not compare tokens with subtle.ConstantTimeCompare")
	}
}

// The agent's own reads take Consul's tokens: dns and agent each fall
// back to the default token, and one set at run time wins over the
// configuration's, an empty one set included (it falls back too).
func TestAgentSecret(t *testing.T) {
	if got := (*Authorizer)(nil).AgentSecret("dns"); got != "" {
		t.Errorf("ACLs off: %q", got)
	}
	a, err := New(Config{Enabled: true, DefaultPolicy: "deny", Default: "dflt", Agent: "agt",
		Tokens: []Token{{Secret: "dflt"}, {Secret: "rt-dns"}}})
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string, want map[string]string) {
		t.Helper()
		for kind, w := range want {
			if got := a.AgentSecret(kind); got != w {
				t.Errorf("%s: %s token %q, want %q", when, kind, got, w)
			}
		}
	}
	check("configured", map[string]string{"default": "dflt", "agent": "agt", "dns": "dflt"})
	a.agentToks.Store(&agentTokens{DNS: "rt-dns", set: map[string]bool{"dns": true, "agent": true, "default": true}})
	check("set at run time", map[string]string{"default": "", "agent": "", "dns": "rt-dns"})
	a.agentToks.Store(&agentTokens{Default: "rt-dns", set: map[string]bool{"default": true}})
	check("a default set at run time", map[string]string{"default": "rt-dns", "agent": "agt", "dns": "rt-dns"})
}
