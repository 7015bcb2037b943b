package acl

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Tokens a secondary datacenter does not have, as Consul's resolver
// treats them. Once its leader replicates tokens (the marker
// aclReplicatedKey is in its state, written by the first round of token
// replication), the datacenter holds every global token, and one it does
// not know is "ACL not found", at once, as in Consul (whose secondary
// resolves locally once its token table is not empty). Until then, and
// always without token replication, a token this agent does not know is
// asked of the primary (GET /v1/acl/token/self there, with the token
// itself), and the answer kept for Config.TokenTTL (Consul's
// acl.token_ttl, 30 s); its policies and roles are this datacenter's
// replicated ones. When the primary cannot be asked, Config.DownPolicy
// (acl.down_policy) decides: "extend-cache" (the default) and
// "async-cache" use the answer kept, however old, and without one act as
// the default policy; "allow" allows all but the ACL API; "deny" denies
// all. A local token of another datacenter is not found here.

// aclReplicatedKey marks a secondary datacenter whose leader replicates
// tokens.
const aclReplicatedKey = aclKVPrefix + "replicated-tokens"

// Down policies, Consul's acl.down_policy.
const (
	DownExtendCache = "extend-cache"
	DownAsyncCache  = "async-cache"
	DownAllow       = "allow"
	DownDeny        = "deny"
)

// remoteTimeout bounds one question to the primary.
const remoteTimeout = 10 * time.Second

// remoteTokens keeps the primary's answers for tokens.
type remoteTokens struct {
	mu     sync.Mutex
	cache  map[[sha256.Size]byte]*remoteEntry
	flight map[[sha256.Size]byte]*remoteCall
}

type remoteEntry struct {
	policy *Policy // nil: the primary does not know the token
	at     time.Time
}

// remoteCall is one question under way; the others asking the same wait
// for it.
type remoteCall struct {
	done   chan struct{}
	policy *Policy
}

// askPrimary reports whether a token this agent does not know is asked of
// the primary: in a secondary whose leader does not replicate tokens.
func (a *Authorizer) askPrimary(t *aclTable) bool {
	return a.secondary() && a.primary != nil && !t.tokensReplicated
}

// resolveRemote answers the policy of a token only the primary knows; nil
// when the primary does not know it.
func (a *Authorizer) resolveRemote(secret string) *Policy {
	h := sha256.Sum256([]byte(secret))
	rt := &a.remote
	rt.mu.Lock()
	c := rt.cache[h]
	if c != nil && time.Since(c.at) < a.tokenTTL && c.policy != nil {
		rt.mu.Unlock()
		return c.policy
	}
	call := rt.flight[h]
	if call == nil {
		call = &remoteCall{done: make(chan struct{})}
		if rt.flight == nil {
			rt.flight = map[[sha256.Size]byte]*remoteCall{}
			rt.cache = map[[sha256.Size]byte]*remoteEntry{}
		}
		rt.flight[h] = call
		rt.mu.Unlock()
		call.policy = a.fetchRemote(secret, h, c)
		rt.mu.Lock()
		delete(rt.flight, h)
		close(call.done)
		rt.mu.Unlock()
		return call.policy
	}
	rt.mu.Unlock()
	<-call.done
	return call.policy
}

// errNotFound: the primary does not know the token.
var errNotFound = fmt.Errorf("ACL not found")

// fetchRemote asks the primary, keeps the answer, and applies the down
// policy when the primary cannot be asked (cached is what was kept).
func (a *Authorizer) fetchRemote(secret string, h [sha256.Size]byte, cached *remoteEntry) *Policy {
	p, err := a.askRemote(secret)
	rt := &a.remote
	rt.mu.Lock()
	defer rt.mu.Unlock()
	switch {
	case err == nil:
		rt.cache[h] = &remoteEntry{policy: p, at: time.Now()}
		a.trimRemote()
		return p
	case err == errNotFound:
		delete(rt.cache, h)
		return nil
	}
	a.log.Warn("acl: cannot resolve a token with the primary datacenter; applying acl.down_policy", "down_policy", a.downPolicy, "err", err)
	switch a.downPolicy {
	case DownAllow:
		return &Policy{allow: true}
	case DownDeny:
		return &Policy{}
	}
	if cached != nil && cached.policy != nil {
		return cached.policy
	}
	return &Policy{allow: a.allow}
}

// maxRemoteTokens bounds the answers kept; past it the expired go.
const maxRemoteTokens = 4096

// trimRemote drops expired answers when too many are kept; rt.mu held.
func (a *Authorizer) trimRemote() {
	if len(a.remote.cache) <= maxRemoteTokens {
		return
	}
	for k, e := range a.remote.cache {
		if time.Since(e.at) >= a.tokenTTL {
			delete(a.remote.cache, k)
		}
	}
}

// askRemote reads the token from the primary and compiles its policy
// against this datacenter's table.
func (a *Authorizer) askRemote(secret string) (*Policy, error) {
	ctx, cancel := context.WithTimeout(context.Background(), remoteTimeout)
	defer cancel()
	code, body, err := a.primary.Get(ctx, a.primaryDC, tokenSelfPath, secret)
	if err != nil {
		return nil, err
	}
	msg := strings.TrimSpace(string(body))
	switch {
	case code == http.StatusForbidden && strings.HasPrefix(msg, "ACL not found"):
		return nil, errNotFound
	case code != http.StatusOK:
		return nil, fmt.Errorf("%d %s", code, msg)
	}
	var v aclTokenView
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, fmt.Errorf("decoding the primary's token: %w", err)
	}
	if v.Local {
		return nil, errNotFound // a local token of the primary, as Consul refuses it here
	}
	res := a.current().resolve(grantOf(v), a.datacenter())
	return &Policy{allow: a.allow, management: res.management, rules: res.rules, accessor: v.AccessorID}, nil
}
