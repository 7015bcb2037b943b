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
// ask any agent the name is delegated to. No DNS propagation check is
// made: the write is committed by a quorum before Present returns. But an
// agent's DNS answers from its registry's copy of the agreed state, which
// follows the Raft log a moment later (just after a server starts, until
// the mirror's first copy): a storage that can tell when that copy has a
// record (ChallengeWaiter) is asked to wait for it before the CA is told
// to look, or the CA may ask in that moment and fail the order.
type dnsSolver struct{ st certmagic.Storage }

// ChallengeWaiter is a Storage that can tell when a DNS-01 record it
// stored is answered by this agent's DNS server.
type ChallengeWaiter interface {
	// WaitChallenge returns once key holds value where DNS answers are
	// made, or with ctx's error.
	WaitChallenge(ctx context.Context, key string, value []byte) error
}

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

// Wait is acmez's Waiter: called after Present, before the CA is asked
// to validate.
func (d dnsSolver) Wait(ctx context.Context, ch acme.Challenge) error {
	w, ok := d.st.(ChallengeWaiter)
	if !ok {
		return nil
	}
	return w.WaitChallenge(ctx, dnsChallengeKey(ch), []byte(ch.DNS01KeyAuthorization()))
}

func (d dnsSolver) CleanUp(ctx context.Context, ch acme.Challenge) error {
	return d.st.Delete(context.WithoutCancel(ctx), dnsChallengeKey(ch))
}
