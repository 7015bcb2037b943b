package api

import (
	"net/http"
	"net/http/pprof"
	"runtime"
	"strconv"
	"time"

	"github.com/shirou/gopsutil/v3/cpu"
	"github.com/shirou/gopsutil/v3/disk"
	"github.com/shirou/gopsutil/v3/host"
	"github.com/shirou/gopsutil/v3/mem"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/raft"
)

// serfStatser is what a Cluster may add for `consul info`'s serf_lan
// section (gossip.Gossip does).
type serfStatser interface {
	SerfStats() map[string]string
}

func (s *Server) debugRoutes() {
	s.route("GET /v1/agent/host", s.agentHost, operatorRead)
	s.route("GET /v1/agent/monitor", s.agentMonitor, s.agentRead)
	if !s.cfg.EnableDebug && !s.cfg.ACL.Enabled {
		return
	}
	s.route("GET /debug/pprof/", pprof.Index, operatorRead) // Go's profiles, as Consul's
	s.route("GET /debug/pprof/cmdline", pprof.Cmdline, operatorRead)
	s.route("GET /debug/pprof/profile", pprof.Profile, operatorRead)
	s.route("GET /debug/pprof/symbol", pprof.Symbol, operatorRead)
	s.route("GET /debug/pprof/trace", pprof.Trace, operatorRead)
}

// addDebugAndStats fills what `consul info` and `consul debug` read from
// /v1/agent/self: Stats, and the two DebugConfig keys consul debug checks
// before it starts (it refuses to run without EnableDebug in the answer).
func (s *Server) addDebugAndStats(out map[string]any) {
	dc, _ := out["DebugConfig"].(map[string]any)
	if dc == nil {
		dc = map[string]any{}
		out["DebugConfig"] = dc
	}
	dc["EnableDebug"] = s.cfg.EnableDebug
	dc["ACLsEnabled"] = s.acl != nil
	out["Stats"] = s.stats()
}

// stats answers Consul's Stats sections that pier has a meaning for, with
// Consul's key names; every value is a string, as Consul's.
func (s *Server) stats() map[string]map[string]string {
	itoa := strconv.Itoa
	var checks, ttls, scripts int
	snap := s.reg.Snapshot()
	for _, c := range snap.AllNodeChecks(s.self()) {
		if c.CheckID == "serfHealth" {
			continue // the catalog's, not a check this agent runs
		}
		checks++
		switch c.Definition.Type() {
		case "ttl":
			ttls++
		case "script":
			scripts++
		}
	}
	services := 0
	for _, e := range snap.NodeServices(s.self()) {
		if e.ID != registry.AgentServiceID { // the catalog's entry for the agent, not a registration
			services++
		}
	}
	out := map[string]map[string]string{
		"agent": {
			"check_monitors": itoa(scripts),
			"check_ttls":     itoa(ttls),
			"checks":         itoa(checks),
			"services":       itoa(services),
		},
		"build": {
			"prerelease":       "",
			"revision":         "",
			"version":          s.cfg.Version,
			"version_metadata": "",
		},
		"runtime": {
			"arch":       runtime.GOARCH,
			"cpu_count":  itoa(runtime.NumCPU()),
			"goroutines": itoa(runtime.NumGoroutine()),
			"max_procs":  itoa(runtime.GOMAXPROCS(0)),
			"os":         runtime.GOOS,
			"version":    runtime.Version(),
		},
	}
	out["serf_lan"] = serfSection(s.members(), s.cfg.Cluster)
	s.consensusStats(out)
	return out
}

// serfSection is a gossip pool's section (serf_lan, serf_wan): members
// counted as Consul's serf counts them, plus what the pool adds when it
// can (a serfStatser).
func serfSection(members []registry.Member, pool any) map[string]string {
	var alive, failed, left int
	for _, m := range members {
		switch m.Status {
		case registry.MemberAlive, registry.MemberLeaving:
			alive++
		case registry.MemberFailed:
			failed++
		case registry.MemberLeft:
			left++
		}
	}
	itoa := strconv.Itoa
	serf := map[string]string{
		// Consul counts every member serf knows but the failed and left
		// ones are also listed apart, as here.
		"members":      itoa(alive + failed + left),
		"failed":       itoa(failed),
		"left":         itoa(left),
		"encrypted":    "false",
		"health_score": "0",
		"intent_queue": "0",
	}
	if st, ok := pool.(serfStatser); ok {
		for k, v := range st.SerfStats() {
			serf[k] = v
		}
	}
	return serf
}

// consensusStats adds Consul's consul section, and on a server its raft
// and serf_wan sections: a server's raft is hashicorp/raft's own Stats,
// as Consul's; a client counts the servers it knows instead.
func (s *Server) consensusStats(out map[string]map[string]string) {
	acl := "disabled"
	if s.acl != nil {
		acl = "enabled"
	}
	var n *raft.Node
	if s.cfg.Consensus != nil {
		n = s.cfg.Consensus.Node()
	}
	if n == nil {
		known := 0
		if s.cfg.Consensus != nil {
			known = len(s.cfg.Consensus.Servers())
		}
		out["consul"] = map[string]string{"server": "false", "known_servers": strconv.Itoa(known), "acl": acl}
		return
	}
	leaderAddr, _ := n.Leader()
	dcs := 1 // this one, without a WAN pool
	if s.cfg.WAN != nil {
		dcs = len(s.cfg.WAN.Datacenters())
		out["serf_wan"] = serfSection(s.cfg.WAN.Members(), s.cfg.WAN)
	}
	bootstrap, _ := s.cfg.Settings["Bootstrap"].(bool)
	out["consul"] = map[string]string{
		"server":            "true",
		"leader":            strconv.FormatBool(n.IsLeader()),
		"leader_addr":       leaderAddr,
		"bootstrap":         strconv.FormatBool(bootstrap),
		"known_datacenters": strconv.Itoa(dcs),
		"acl":               acl,
	}
	out["raft"] = n.Stats()
}

// hostInfo is Consul's /v1/agent/host answer. Its parts are gopsutil's
// structs, as Consul's are, so that `consul debug`'s host.json and any tool
// reading it see the same field names.
type hostInfo struct {
	Memory         *mem.VirtualMemoryStat
	CPU            []cpu.InfoStat
	Host           *host.InfoStat
	Disk           *disk.UsageStat
	CollectionTime int64
	Errors         []string // Consul's are Go errors, which encode as {}; the text says more
}

func (s *Server) agentHost(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	out := hostInfo{CollectionTime: time.Now().UTC().UnixNano(), Errors: []string{}}
	var err error
	if out.Host, err = host.InfoWithContext(ctx); err != nil {
		out.Errors = append(out.Errors, "host: "+err.Error())
	}
	if out.Memory, err = mem.VirtualMemoryWithContext(ctx); err != nil {
		out.Errors = append(out.Errors, "memory: "+err.Error())
	}
	if out.Disk, err = disk.UsageWithContext(ctx, "/"); err != nil {
		out.Errors = append(out.Errors, "disk: "+err.Error())
	}
	if out.CPU, err = cpu.InfoWithContext(ctx); err != nil {
		out.Errors = append(out.Errors, "cpu: "+err.Error())
	}
	writeJSON(w, r, out)
}
