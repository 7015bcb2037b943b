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
	var alive, failed, left int
	for _, m := range s.members() {
		switch m.Status {
		case registry.MemberAlive, registry.MemberLeaving:
			alive++
		case registry.MemberFailed:
			failed++
		case registry.MemberLeft:
			left++
		}
	}
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
	if st, ok := s.cfg.Cluster.(serfStatser); ok {
		for k, v := range st.SerfStats() {
			serf[k] = v
		}
	}
	return map[string]map[string]string{
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
		"serf_lan": serf,
	}
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
