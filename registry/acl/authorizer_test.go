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
