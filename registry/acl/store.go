package acl

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry"
)

// Tokens, policies and roles made through the API live in the KV store
// under aclKVPrefix (registry.AgreedReservedPrefix), one key per object:
// with servers, in their Raft state, written through the leader (Writer,
// writer.go) and mirrored into every agent's registry snapshot; without,
// in the gossip KV store (persisted, replicated, last writer wins). Either
// way they survive restarts and reach the whole cluster with no machinery
// of their own. The KV API neither shows nor accepts keys under
// registry.ReservedKVPrefix (kv.go), so no KV rule can read a secret or
// forge a token.
//
// The values hold the secrets in the clear, as Consul's Raft log does: a
// token must be readable again (consul acl token read). They are never
// logged (only keys, which name accessors); the data dir's files are 0600,
// and gossip should be encrypted (-encrypt) when ACLs matter.
const (
	aclKVPrefix     = registry.AgreedReservedPrefix
	aclPolicyPrefix = aclKVPrefix + "policy/"
	aclTokenPrefix  = aclKVPrefix + "token/"
	aclRolePrefix   = aclKVPrefix + "role/"
	// aclBootstrapKey marks the cluster bootstrapped (bootstrap.go); its
	// ModifyIndex is Consul's reset index.
	aclBootstrapKey = aclKVPrefix + "bootstrap"
)

// Consul's built-in names.
const (
	managementPolicyID   = "00000000-0000-0000-0000-000000000001"
	managementPolicyName = "global-management"
	anonymousAccessor    = "00000000-0000-0000-0000-000000000002"
	redacted             = "<hidden>" // a SecretID shown to a token without acl:write
)

const managementRules = `acl = "write"
operator = "write"
keyring = "write"
agent_prefix "" { policy = "write" }
key_prefix "" { policy = "write" }
node_prefix "" { policy = "write" }
service_prefix "" { policy = "write" }
`

// storedPolicy and storedToken are the KV values.
type storedPolicy struct {
	ID          string
	Name        string
	Description string
	Rules       string
	Datacenters []string `json:",omitempty"`
}

type storedToken struct {
	AccessorID  string
	SecretID    string
	Description string
	grant       // policy and role IDs (names are looked up when shown), identities
	Local       bool
	CreateTime  time.Time
}

// aclLink is Consul's ACLLink.
type aclLink struct {
	ID   string
	Name string
}

// aclPolicyView is Consul's ACLPolicy.
type aclPolicyView struct {
	ID          string
	Name        string
	Description string
	Rules       string
	Datacenters []string
	Hash        []byte
	CreateIndex uint64
	ModifyIndex uint64
}

// aclTokenView is Consul's Token.
type aclTokenView struct {
	CreateIndex       uint64
	ModifyIndex       uint64
	AccessorID        string
	SecretID          string
	Description       string
	Policies          []aclLink         `json:",omitempty"`
	Roles             []aclLink         `json:",omitempty"`
	ServiceIdentities []serviceIdentity `json:",omitempty"`
	NodeIdentities    []nodeIdentity    `json:",omitempty"`
	Local             bool
	CreateTime        time.Time
	Hash              []byte
}

type policyEntry struct {
	view    aclPolicyView
	rules   *ruleSet
	builtin bool
}

type tokenEntry struct {
	hash   [sha256.Size]byte // of the secret
	policy *Policy
	view   aclTokenView // SecretID included: redact before showing
	static bool         // from the configuration: read-only
}

// aclTable is every token and policy as of one KV index, immutable once
// published.
type aclTable struct {
	kvIndex  uint64
	count    int    // ACL keys in the KV store
	maxIndex uint64 // their highest ModifyIndex
	agreed   bool   // read from the servers' agreed store
	policies map[string]*policyEntry
	byName   map[string]*policyEntry
	tokens   map[string]*tokenEntry // by accessor
	bySecret map[[sha256.Size]byte]*tokenEntry
	roles    map[string]*roleEntry
	// rolesByName, as byName for policies.
	rolesByName map[string]*roleEntry
	// bootstrapIndex is the bootstrap marker's ModifyIndex; 0: not
	// bootstrapped.
	bootstrapIndex uint64
	// tokensReplicated: this is a secondary datacenter whose leader
	// replicates tokens (remote.go).
	tokensReplicated bool
}

// Attach connects the Authorizer to the KV store, where the API's tokens,
// policies and roles live, and reads the agent tokens persisted in
// Config.TokenFile. Call it once, before the first request; log nil
// discards.
func (a *Authorizer) Attach(reg *registry.Registry, log *slog.Logger) error {
	a.reg = reg
	a.w = gossipWriter{reg}
	if log != nil {
		a.log = log
	}
	return a.loadAgentTokens(reg.Config().NodeName)
}

// current answers the table for the newest KV snapshot. The request path
// pays one atomic load and one compare while nothing changed; after a KV
// change the first request checks whether any ACL key changed (their count
// and highest ModifyIndex: a write raises the index, a delete lowers the
// count) and rebuilds only then, so KV traffic does not rebuild the table.
func (a *Authorizer) current() *aclTable {
	t := a.table.Load()
	if a.reg == nil || a.reg.Snapshot().KVIndex() == t.kvIndex {
		return t
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refreshLocked()
}

// refreshLocked brings the table up to the newest snapshot; a.mu held.
func (a *Authorizer) refreshLocked() *aclTable {
	t := a.table.Load()
	snap := a.reg.Snapshot()
	if snap.KVIndex() == t.kvIndex {
		return t
	}
	entries := snap.KVList(aclKVPrefix)
	if a.agreedOnly && !snap.Agreed() {
		// With servers, the gossip store's ACL keys are from before them:
		// until their state arrives only the config's tokens resolve.
		entries = nil
	}
	var hi uint64
	for _, e := range entries {
		hi = max(hi, e.ModifyIndex)
	}
	var nt *aclTable
	// The first agreed state replaces the gossip store, whose indexes are
	// of another space: rebuilt whatever the count and index say.
	if len(entries) == t.count && hi == t.maxIndex && snap.Agreed() == t.agreed {
		c := *t
		nt = &c
		nt.kvIndex = snap.KVIndex()
	} else {
		nt = a.build(snap.KVIndex(), entries)
		nt.count, nt.maxIndex, nt.agreed = len(entries), hi, snap.Agreed()
	}
	a.table.Store(nt)
	return nt
}

// build makes a table of the configuration's tokens and the stored objects.
func (a *Authorizer) build(kvIndex uint64, entries []*registry.KVEntry) *aclTable {
	t := &aclTable{
		kvIndex:  kvIndex,
		policies: map[string]*policyEntry{},
		byName:   map[string]*policyEntry{},
		tokens:   map[string]*tokenEntry{},
		bySecret: map[[sha256.Size]byte]*tokenEntry{},
		roles:    map[string]*roleEntry{},
		// rolesByName as byName
		rolesByName: map[string]*roleEntry{},
	}
	dc := a.datacenter()
	mgmt := &policyEntry{builtin: true, view: aclPolicyView{
		ID: managementPolicyID, Name: managementPolicyName,
		Description: "Builtin Policy that grants unlimited access", Rules: managementRules,
		CreateIndex: 1, ModifyIndex: 1,
	}}
	t.policies[mgmt.view.ID], t.byName[mgmt.view.Name] = mgmt, mgmt
	var tokens, roles []*registry.KVEntry
	for _, e := range entries {
		if e.Key == aclBootstrapKey {
			t.bootstrapIndex = max(e.ModifyIndex, 1)
			continue
		}
		if e.Key == aclReplicatedKey {
			t.tokensReplicated = true
			continue
		}
		if strings.HasPrefix(e.Key, aclTokenPrefix) {
			tokens = append(tokens, e)
			continue
		}
		if strings.HasPrefix(e.Key, aclRolePrefix) {
			roles = append(roles, e)
			continue
		}
		var sp storedPolicy
		if err := json.Unmarshal(e.Value, &sp); err != nil || !strings.HasPrefix(e.Key, aclPolicyPrefix) || sp.ID != strings.TrimPrefix(e.Key, aclPolicyPrefix) {
			a.log.Warn("acl: skipping a stored object that does not decode", "key", e.Key)
			continue
		}
		r, err := ParseRules(sp.Rules)
		if err != nil {
			a.log.Warn("acl: skipping a stored policy whose rules do not parse", "id", sp.ID, "err", err)
			continue
		}
		rs, _ := compileRules(r) // ParseRules compiled them already
		pe := &policyEntry{rules: rs, view: aclPolicyView{
			ID: sp.ID, Name: sp.Name, Description: sp.Description, Rules: sp.Rules, Datacenters: sp.Datacenters,
			CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex,
		}}
		t.policies[sp.ID] = pe
		// Two nodes may create the same name at once; the lowest ID wins
		// everywhere, so every node resolves the name alike.
		if o, ok := t.byName[sp.Name]; !ok || !o.builtin && sp.ID < o.view.ID {
			t.byName[sp.Name] = pe
		}
	}
	// Roles after the policies they link to, before the tokens that link
	// to them.
	for _, e := range roles {
		var sr storedRole
		if err := json.Unmarshal(e.Value, &sr); err != nil || sr.ID != strings.TrimPrefix(e.Key, aclRolePrefix) {
			a.log.Warn("acl: skipping a stored object that does not decode", "key", e.Key)
			continue
		}
		sr.Roles = nil // a role holds no roles
		res := t.resolve(sr.grant, dc)
		re := &roleEntry{rules: res.rules, management: res.management, view: aclRoleView{
			ID: sr.ID, Name: sr.Name, Description: sr.Description, Policies: res.policies,
			ServiceIdentities: sr.ServiceIdentities, NodeIdentities: sr.NodeIdentities,
			CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex,
		}}
		t.roles[sr.ID] = re
		if o, ok := t.rolesByName[sr.Name]; !ok || sr.ID < o.view.ID {
			t.rolesByName[sr.Name] = re
		}
	}
	// The configuration's tokens first: they win any clash of accessor or
	// secret with a stored token.
	for _, e := range a.static {
		t.tokens[e.view.AccessorID] = e
		t.bySecret[e.hash] = e
	}
	for _, e := range tokens {
		var st storedToken
		if err := json.Unmarshal(e.Value, &st); err != nil || st.AccessorID != strings.TrimPrefix(e.Key, aclTokenPrefix) || st.SecretID == "" {
			a.log.Warn("acl: skipping a stored object that does not decode", "key", e.Key)
			continue
		}
		res := t.resolve(st.grant, dc)
		te := &tokenEntry{hash: sha256.Sum256([]byte(st.SecretID)), view: aclTokenView{
			CreateIndex: e.CreateIndex, ModifyIndex: e.ModifyIndex,
			AccessorID: st.AccessorID, SecretID: st.SecretID, Description: st.Description,
			Policies: res.policies, Roles: res.roles,
			ServiceIdentities: st.ServiceIdentities, NodeIdentities: st.NodeIdentities,
			Local: st.Local, CreateTime: st.CreateTime,
		}}
		if _, clash := t.tokens[st.AccessorID]; clash {
			continue
		}
		if _, clash := t.bySecret[te.hash]; clash {
			continue
		}
		te.policy = &Policy{allow: a.allow, management: res.management, rules: res.rules, accessor: st.AccessorID}
		t.tokens[st.AccessorID] = te
		t.bySecret[te.hash] = te
	}
	return t
}

// datacenter answers this agent's datacenter, in which policies and
// identities limited to some datacenters apply or not.
func (a *Authorizer) datacenter() string {
	if a.reg == nil {
		return ""
	}
	return a.reg.Config().Datacenter
}

// policyByRef finds a policy by ID, else by name.
func (t *aclTable) policyByRef(l aclLink) (*policyEntry, bool) {
	return byRef(t.policies, t.byName, l)
}

// byRef finds an object of byID by l's ID, else of byName by its name.
func byRef[E any](byID, byName map[string]*E, l aclLink) (*E, bool) {
	if l.ID != "" {
		e, ok := byID[l.ID]
		return e, ok
	}
	e, ok := byName[l.Name]
	return e, ok
}

func (t *aclTable) sortedPolicies() []*policyEntry {
	return sortedByName(t.policies, func(pe *policyEntry) (string, string) { return pe.view.Name, pe.view.ID })
}

// sortedByName answers the objects of m by name, then ID, as Consul lists
// policies and roles; key answers an object's name and ID.
func sortedByName[E any](m map[string]E, key func(E) (name, id string)) []E {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b E) int {
		an, aid := key(a)
		bn, bid := key(b)
		return cmp.Or(cmp.Compare(an, bn), cmp.Compare(aid, bid))
	})
	return out
}

func (t *aclTable) sortedTokens() []*tokenEntry {
	out := slices.Collect(maps.Values(t.tokens))
	sort.Slice(out, func(i, j int) bool { return out[i].view.AccessorID < out[j].view.AccessorID })
	return out
}

// newUUID answers a random version 4 UUID, the shape of Consul's IDs.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return uuidString(b[:])
}

func uuidString(b []byte) string {
	h := hex.EncodeToString(b[:16])
	return fmt.Sprintf("%s-%s-%s-%s-%s", h[:8], h[8:12], h[12:16], h[16:20], h[20:32])
}

// derivedAccessor names a configuration token by a hash of its secret, so
// that every node, and every restart, shows the same accessor for it.
func derivedAccessor(secret string) string {
	h := sha256.Sum256([]byte("pier acl accessor\x00" + secret))
	h[6] = h[6]&0x0f | 0x50
	h[8] = h[8]&0x3f | 0x80
	return uuidString(h[:])
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
				return false
			}
		}
	}
	return true
}
