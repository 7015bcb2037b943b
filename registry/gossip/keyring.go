package gossip

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// ParseKey decodes a gossip encryption key as consul keygen makes it: the
// base64 of 16, 24 or 32 random bytes (AES-128, -192 or -256).
func ParseKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip: encryption key is not base64: %w", err)
	}
	switch len(b) {
	case 16, 24, 32:
		return b, nil
	}
	return nil, fmt.Errorf("gossip: encryption key must be 16, 24 or 32 bytes, not %d", len(b))
}

// NewKey returns a new 32-byte key in the form ParseKey reads.
func NewKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}
