package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// dnsSolver answers ACME's DNS-01 challenge through the certificate
// storage: the TXT record's value for _acme-challenge.<name> is stored
// under dnsChallengeKey, which in the agent's storage is
// registry.ACMEChallengeKVPrefix in the servers' KV, written through Raft
// and answered by every agent's DNS server (registry/dns). The CA may so
// ask any agent the name is delegated to. No propagation check is made:
// the write is committed by a quorum before Present returns, and each
// agent's DNS answers as soon as its snapshot has it.
type dnsSolver struct{ st certmagic.Storage }

// dnsChallengeKey is where a record is kept: one key per value (a name
// and its wildcard share the record name, each with its own value).
func dnsChallengeKey(ch acme.Challenge) string {
	v := ch.DNS01KeyAuthorization()
	sum := sha256.Sum256([]byte(v))
	return "dns/" + strings.ToLower(strings.TrimSuffix(ch.DNS01TXTRecordName(), ".")) + "/" + hex.EncodeToString(sum[:8])
}

func (d dnsSolver) Present(ctx context.Context, ch acme.Challenge) error {
	return d.st.Store(ctx, dnsChallengeKey(ch), []byte(ch.DNS01KeyAuthorization()))
}

func (d dnsSolver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	return d.st.Delete(context.WithoutCancel(ctx), dnsChallengeKey(ch))
}
