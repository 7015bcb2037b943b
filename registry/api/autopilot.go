package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pier-dev/pier/registry/raft"
)

// Consul's autopilot endpoints (consul operator autopilot get-config,
// set-config, state), answered by the leader from what registry/raft acts
// on: the dead-server cleanup and the health it sees of each server. The
// settings Consul's autopilot has and pier does not act on are answered
// with Consul's defaults and cannot be changed.

func (s *Server) autopilotRoutes() {
	s.raftRoute("GET /v1/operator/autopilot/configuration", s.autopilotGetConfig, operatorRead)
	s.raftRoute("PUT /v1/operator/autopilot/configuration", s.autopilotSetConfig, operatorWrite)
	s.raftRoute("GET /v1/operator/autopilot/health", s.autopilotHealth, operatorRead)
	s.raftRoute("GET /v1/operator/autopilot/state", s.autopilotState, operatorRead)
}

// duration is Consul's ReadableDuration: "10s" in JSON, and a number of
// nanoseconds is read too.
type duration time.Duration

func (d duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		*d = duration(v)
		return err
	}
	var n int64
	err := json.Unmarshal(b, &n)
	*d = duration(n)
	return err
}

// autopilotConfig is Consul's AutopilotConfiguration; DeadServerTimeout is
// pier's, the autopilot.dead_server_timeout it acts on (absent while the
// cleanup is off).
type autopilotConfig struct {
	CleanupDeadServers      bool
	LastContactThreshold    duration
	MaxTrailingLogs         uint64
	MinQuorum               uint
	ServerStabilizationTime duration
	RedundancyZoneTag       string
	DisableUpgradeMigration bool
	UpgradeVersionTag       string
	CreateIndex             uint64
	ModifyIndex             uint64
	DeadServerTimeout       *duration `json:",omitempty"`
}

// consulAutopilot is Consul's default configuration, which pier answers
// for what it does not act on.
func consulAutopilot() autopilotConfig {
	return autopilotConfig{
		CleanupDeadServers:      true,
		LastContactThreshold:    duration(200 * time.Millisecond),
		MaxTrailingLogs:         raft.MaxTrailingLogs,
		ServerStabilizationTime: duration(10 * time.Second),
	}
}

func currentAutopilot(n *raft.Node) autopilotConfig {
	c := consulAutopilot()
	c.CleanupDeadServers = n.CleanupDeadServers() > 0
	if c.CleanupDeadServers {
		d := duration(n.CleanupDeadServers())
		c.DeadServerTimeout = &d
	}
	return c
}

func (s *Server) autopilotGetConfig(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	_, n, ok := s.raftRead(w, r)
	if !ok {
		return
	}
	writeJSON(w, r, currentAutopilot(n))
}

// autopilotSetConfig takes a configuration that changes nothing (what
// consul operator autopilot set-config sends without flags) and refuses
// any change with a 400 that names the field: the dead-server cleanup is
// each server's configuration file's, and the rest pier does not act on.
func (s *Server) autopilotSetConfig(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	if v := r.URL.Query(); v.Has("cas") {
		if _, err := strconv.ParseUint(v.Get("cas"), 10, 64); err != nil {
			httpError(w, http.StatusBadRequest, "Error parsing cas value: %v", err)
			return
		}
	}
	n, ok := s.raftWrite(w, r) // forwards the body untouched
	if !ok {
		return
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	cur := currentAutopilot(n)
	in := consulAutopilot()
	if err := json.Unmarshal(body, &in); err != nil {
		httpError(w, http.StatusBadRequest, "Error parsing autopilot config: %v", err)
		return
	}
	var changed []string
	if in.CleanupDeadServers != cur.CleanupDeadServers {
		changed = append(changed, "CleanupDeadServers (each server's autopilot.cleanup_dead_servers)")
	}
	if in.DeadServerTimeout != nil && (cur.DeadServerTimeout == nil || *in.DeadServerTimeout != *cur.DeadServerTimeout) {
		changed = append(changed, "DeadServerTimeout (each server's autopilot.dead_server_timeout)")
	}
	for _, f := range []struct {
		name string
		same bool
	}{
		{"LastContactThreshold", in.LastContactThreshold == cur.LastContactThreshold},
		{"MaxTrailingLogs", in.MaxTrailingLogs == cur.MaxTrailingLogs},
		{"MinQuorum", in.MinQuorum == cur.MinQuorum},
		{"ServerStabilizationTime", in.ServerStabilizationTime == cur.ServerStabilizationTime},
		{"RedundancyZoneTag", in.RedundancyZoneTag == cur.RedundancyZoneTag},
		{"DisableUpgradeMigration", in.DisableUpgradeMigration == cur.DisableUpgradeMigration},
		{"UpgradeVersionTag", in.UpgradeVersionTag == cur.UpgradeVersionTag},
	} {
		if !f.same {
			changed = append(changed, f.name+" (pier does not act on it)")
		}
	}
	if len(changed) > 0 {
		httpError(w, http.StatusBadRequest, "%s: pier cannot change autopilot's configuration at runtime", strings.Join(changed, ", "))
		return
	}
	writeJSON(w, r, true)
}

// leaderView answers the leader's node, also for ?stale: only the leader
// polls the others, so a follower knows no one's health but its own.
func (s *Server) leaderView(w http.ResponseWriter, r *http.Request) (*raft.Node, bool) {
	n, ok := s.raftWrite(w, r)
	if ok {
		s.raftMeta(w, r, n)
	}
	return n, ok
}

// serverHealth is Consul's ServerHealth.
type serverHealth struct {
	ID          string
	Name        string
	Address     string
	SerfStatus  string
	Version     string
	Leader      bool
	LastContact duration
	LastTerm    uint64
	LastIndex   uint64
	Healthy     bool
	Voter       bool
	StableSince time.Time
}

// lastContact is Consul's: a server that has not answered shows a
// negative duration, as Consul's does for one it has no stats of.
func lastContact(h raft.ServerHealth) duration { return duration(h.LastContact) }

func (s *Server) autopilotHealth(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	n, ok := s.leaderView(w, r)
	if !ok {
		return
	}
	servers, healthy, tolerance := n.Health()
	out := struct {
		Healthy          bool
		FailureTolerance int
		Servers          []serverHealth
	}{Healthy: healthy, FailureTolerance: tolerance, Servers: []serverHealth{}}
	for _, h := range servers {
		out.Servers = append(out.Servers, serverHealth{
			ID: h.ID, Name: h.Node, Address: h.Address, SerfStatus: h.SerfStatus, Version: s.cfg.Version,
			Leader: h.Leader, LastContact: lastContact(h), LastTerm: h.LastTerm, LastIndex: h.LastIndex,
			Healthy: h.Healthy, Voter: h.Voter, StableSince: h.StableSince.Round(time.Second).UTC(),
		})
	}
	if !healthy {
		// Consul's answer for an unhealthy group; its client takes it.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		json.NewEncoder(w).Encode(out)
		return
	}
	writeJSON(w, r, out)
}

// autopilotServer is Consul's AutopilotServer.
type autopilotServer struct {
	ID          string
	Name        string
	Address     string
	NodeStatus  string
	Version     string
	LastContact duration
	LastTerm    uint64
	LastIndex   uint64
	Healthy     bool
	StableSince time.Time
	ReadReplica bool
	Status      string // leader, voter, non-voter
	Meta        map[string]string
	NodeType    string
}

func (s *Server) autopilotState(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	n, ok := s.leaderView(w, r)
	if !ok {
		return
	}
	servers, healthy, tolerance := n.Health()
	out := struct {
		Healthy                    bool
		FailureTolerance           int
		OptimisticFailureTolerance int
		Servers                    map[string]autopilotServer
		Leader                     string
		Voters                     []string
	}{Healthy: healthy, FailureTolerance: tolerance, Servers: map[string]autopilotServer{}, Voters: []string{}}
	voters := 0
	for _, h := range servers {
		status := "non-voter"
		switch {
		case h.Leader:
			status = "leader"
			out.Leader = h.ID
		case h.Voter:
			status = "voter"
		}
		nodeType := ""
		if h.Voter {
			nodeType = "voter"
			voters++
			out.Voters = append(out.Voters, h.ID)
		}
		out.Servers[h.ID] = autopilotServer{
			ID: h.ID, Name: h.Node, Address: h.Address, NodeStatus: h.SerfStatus, Version: s.cfg.Version,
			LastContact: lastContact(h), LastTerm: h.LastTerm, LastIndex: h.LastIndex, Healthy: h.Healthy,
			StableSince: h.StableSince, Status: status, Meta: map[string]string{}, NodeType: nodeType,
		}
	}
	// Optimistic: as if every voter were healthy.
	out.OptimisticFailureTolerance = max(voters-(voters/2+1), 0)
	writeJSON(w, r, out)
}
