package api

import (
	"encoding/json"
	"net/http"
	"strings"
)

// refuseRemoteExec answers `consul exec`'s first write, the session of its
// job (PUT /v1/session/create named "Remote Exec", or "Remote Exec via
// node@dc" from another datacenter), with a refusal; true means it did.
//
// pier never runs remote exec jobs: it is Consul's disable_remote_exec,
// the default since Consul 0.8. Consul itself accepts the session, the job
// and the event, ignores the event on every agent, and the command ends
// with "0 / 0 node(s) completed / acknowledged"; pier has no sessions yet,
// so it says at the first step why nothing will run. Other sessions pass
// on to the router.
func (s *Server) refuseRemoteExec(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.Path != "/v1/session/create" || r.Method != http.MethodPut && r.Method != http.MethodPost {
		return false
	}
	b, ok := peekBody(r, s.cfg.MaxBodySize)
	if !ok {
		return false
	}
	var se struct{ Name string }
	if json.Unmarshal(b, &se) != nil {
		return false
	}
	if se.Name != "Remote Exec" && !strings.HasPrefix(se.Name, "Remote Exec via ") {
		return false
	}
	s.log.Info("refusing a remote exec job: remote exec is disabled", "remote", r.RemoteAddr)
	httpError(w, http.StatusForbidden, "remote exec is disabled on this agent (disable_remote_exec, Consul's default since 0.8): pier does not run consul exec jobs")
	return true
}
