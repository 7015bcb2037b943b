package acl

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// PUT /v1/acl/bootstrap, as Consul's: the first management token of a
// cluster, made once. One transaction (check that the marker does not
// exist, set it, set the token) decides it, so two bootstraps racing
// through different agents cannot both win: with servers the Raft leader
// applies them one after the other and the second one's check fails.
// The marker's ModifyIndex is the reset index: an operator who lost every
// management token writes it into BootstrapResetFile on the leader, and the
// next bootstrap checks the marker still has that index instead (so a
// reset, too, happens once).
//
// A configuration with an initial management token counts as bootstrapped,
// as in Consul (whose leader bootstraps with that token): an anonymous
// caller must not get a second management token from such a cluster.

// bootstrapResponse is Consul's: the token, and its SecretID again as ID
// (the legacy field its clients still read).
type bootstrapResponse struct {
	ID string
	aclTokenView
}

func (s *Endpoints) aclBootstrap(w http.ResponseWriter, r *http.Request) {
	if !s.aclOn(w) {
		return
	}
	if s.acl.secondary() {
		// Consul's answer: only the primary datacenter bootstraps; the
		// others get its tokens by replication.
		httpError(w, http.StatusInternalServerError, "ACL support disabled")
		return
	}
	var in struct{ BootstrapSecret string }
	if !s.decodeJSONBody(w, r, &in) {
		return
	}
	if in.BootstrapSecret != "" && !validUUID(in.BootstrapSecret) {
		httpError(w, http.StatusBadRequest, "Invalid BootstrapSecret: not a UUID")
		return
	}
	a := s.acl
	a.mu.Lock()
	defer a.mu.Unlock()
	t := a.syncLocked()
	if a.initialMgmt && t.bootstrapIndex == 0 {
		notAllowed(w, 0)
		return
	}
	check := Op{Verb: OpCheckNotExists, Key: aclBootstrapKey}
	if t.bootstrapIndex != 0 {
		reset, ok := a.resetIndex()
		if !ok {
			notAllowed(w, t.bootstrapIndex)
			return
		}
		// Removed whether this bootstrap works or not, as Consul: a file
		// left behind would allow one more after a snapshot restore.
		if err := os.Remove(a.resetFile); err != nil {
			a.log.Warn("acl: removing the bootstrap reset file", "err", err)
		}
		if reset != t.bootstrapIndex {
			httpError(w, http.StatusInternalServerError, "Invalid bootstrap reset index (specified %d, reset index: %d)", reset, t.bootstrapIndex)
			return
		}
		check = Op{Verb: OpCheckIndex, Key: aclBootstrapKey, Index: reset}
	}
	secret := in.BootstrapSecret
	if secret == "" {
		secret = newUUID()
	} else if a.lookupIn(t, secret) != nil {
		httpError(w, http.StatusBadRequest, "Invalid BootstrapSecret: a token with that secret already exists")
		return
	}
	accessor := newUUID()
	st := storedToken{AccessorID: accessor, SecretID: secret, Description: "Bootstrap Token (Global Management)",
		grant: grant{Policies: []string{managementPolicyID}}, CreateTime: time.Now().UTC()}
	tok, err := json.Marshal(st)
	if err != nil {
		writeError(w, "Invalid Token", err)
		return
	}
	marker, _ := json.Marshal(struct{ AccessorID string }{accessor})
	ok, err := a.w.Txn([]Op{check,
		{Verb: OpSet, Key: aclBootstrapKey, Value: marker},
		{Verb: OpSet, Key: aclTokenPrefix + accessor, Value: tok}})
	if err != nil {
		writeError(w, "ACL bootstrap", err)
		return
	}
	t = a.syncLocked()
	if !ok {
		// Another bootstrap won meanwhile.
		notAllowed(w, t.bootstrapIndex)
		return
	}
	te, found := t.tokens[accessor]
	if !found {
		httpError(w, http.StatusInternalServerError, "the bootstrap token was written but is not in the table")
		return
	}
	a.log.Info("acl: bootstrap completed", "accessor", accessor)
	writeJSON(w, r, bootstrapResponse{ID: te.view.SecretID, aclTokenView: te.view})
}

// notAllowed is Consul's 403 for a bootstrap after the first.
func notAllowed(w http.ResponseWriter, resetIndex uint64) {
	httpError(w, http.StatusForbidden, "Permission denied: ACL bootstrap no longer allowed (reset index: %d)", resetIndex)
}

// resetIndex reads the reset index the operator wrote into the reset file;
// false when there is none (no file, or one that does not hold a number).
func (a *Authorizer) resetIndex() (uint64, bool) {
	if a.resetFile == "" {
		return 0, false
	}
	b, err := os.ReadFile(a.resetFile)
	if err != nil {
		if !os.IsNotExist(err) {
			a.log.Warn("acl: reading the bootstrap reset file", "err", err)
		}
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n == 0 {
		a.log.Warn("acl: the bootstrap reset file does not hold a reset index", "file", a.resetFile, "err", fmt.Sprint(err))
		return 0, false
	}
	return n, true
}
