package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pier-dev/pier/registry"
)

// Health is what the API needs from the health checks' runner: TTL updates
// that also restart the check's TTL. *health.Runner satisfies it.
type Health interface {
	UpdateTTL(checkID string, status registry.Status, output string) error
}

// The maintenance checks, named as Consul names them: clients and UIs look
// for these IDs.
const (
	nodeMaintCheckID   = "_node_maintenance"
	serviceMaintPrefix = "_service_maintenance:"
	nodeMaintReason    = "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
	serviceMaintReason = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
	outputMaxSize      = 4096 // Consul's limit on a check's output
)

func (s *Server) checkRoutes() {
	for _, st := range []struct {
		path   string
		status registry.Status
	}{{"pass", registry.StatusPassing}, {"warn", registry.StatusWarning}, {"fail", registry.StatusCritical}} {
		s.writes("/v1/agent/check/"+st.path+"/{id...}", func(w http.ResponseWriter, r *http.Request) {
			s.ttlUpdate(w, r, st.status, r.URL.Query().Get("note"))
		}, s.checkIDWrite)
	}
	s.writes("/v1/agent/check/update/{id...}", s.checkUpdate, s.checkIDWrite)
	s.writes("/v1/agent/service/maintenance/{id...}", s.serviceMaintenance, s.serviceIDWrite)
	s.writes("/v1/agent/maintenance", s.nodeMaintenance, s.nodeAndAgentWrite)
	s.route("GET /v1/agent/health/service/id/{id...}", s.agentHealthByID, s.serviceIDRead)
	s.route("GET /v1/agent/health/service/name/{name...}", s.agentHealthByName, serviceRead)
}

func (s *Server) checkUpdate(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var u struct{ Status, Output string }
	if len(body) > 0 {
		if err := json.Unmarshal(body, &u); err != nil {
			httpError(w, http.StatusBadRequest, "Request decode failed: %v", err)
			return
		}
	}
	st, err := registry.ParseStatus(u.Status)
	if err != nil {
		httpError(w, http.StatusBadRequest, "Status: invalid check status %q: %v", u.Status, err)
		return
	}
	s.ttlUpdate(w, r, st, u.Output)
}

func (s *Server) ttlUpdate(w http.ResponseWriter, r *http.Request, st registry.Status, output string) {
	id := r.PathValue("id")
	if len(output) > outputMaxSize {
		cut := outputMaxSize
		for cut > 0 && !utf8.RuneStart(output[cut]) {
			cut-- // not inside a character: the output stays valid UTF-8
		}
		output = output[:cut]
	}
	var err error
	if s.cfg.Health != nil {
		err = s.cfg.Health.UpdateTTL(id, st, output)
	} else {
		err = s.updateTTLCatalog(id, st, output)
	}
	if err != nil {
		writeError(w, "Update", err)
	}
}

// updateTTLCatalog is the TTL update without a health runner: the status is
// recorded, but nothing will expire it.
func (s *Server) updateTTLCatalog(id string, st registry.Status, output string) error {
	for _, c := range s.reg.Snapshot().AllNodeChecks(s.self()) {
		if c.CheckID == id && c.Definition.TTL > 0 {
			return s.reg.UpdateCheck(id, st, output)
		}
	}
	return fmt.Errorf("CheckID %q does not have associated TTL: %w", id, registry.ErrNotFound)
}

// parseEnable reads ?enable= of the maintenance endpoints; false means an
// error answer was sent.
func parseEnable(w http.ResponseWriter, r *http.Request) (enable, ok bool) {
	q := r.URL.Query()
	if !q.Has("enable") {
		httpError(w, http.StatusBadRequest, "enable: missing value (true or false)")
		return false, false
	}
	v, err := strconv.ParseBool(q.Get("enable"))
	if err != nil {
		httpError(w, http.StatusBadRequest, "enable: invalid value %q (true or false)", q.Get("enable"))
		return false, false
	}
	return v, true
}

// serviceMaintenance puts a service in maintenance with a critical check
// _service_maintenance:<id>, or takes it out, as Consul does. Enabling it
// twice keeps the first reason.
func (s *Server) serviceMaintenance(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	enable, ok := parseEnable(w, r)
	if !ok {
		return
	}
	if _, found := s.reg.Snapshot().NodeService(s.self(), id); !found {
		httpError(w, http.StatusNotFound, "Unknown service ID %q", id)
		return
	}
	reason := r.URL.Query().Get("reason")
	if reason == "" {
		reason = serviceMaintReason
	}
	s.maintenance(w, registry.Check{
		CheckID: serviceMaintPrefix + id, Name: "Service Maintenance Mode",
		Notes: reason, ServiceID: id, Status: registry.StatusCritical,
	}, enable)
}

// nodeMaintenance puts the whole node in maintenance (check
// _node_maintenance), which takes every service of the node out of the
// healthy answers.
func (s *Server) nodeMaintenance(w http.ResponseWriter, r *http.Request) {
	enable, ok := parseEnable(w, r)
	if !ok {
		return
	}
	reason := r.URL.Query().Get("reason")
	if reason == "" {
		reason = nodeMaintReason
	}
	s.maintenance(w, registry.Check{
		CheckID: nodeMaintCheckID, Name: "Node Maintenance Mode",
		Notes: reason, Status: registry.StatusCritical,
	}, enable)
}

func (s *Server) maintenance(w http.ResponseWriter, c registry.Check, enable bool) {
	if !enable {
		if err := s.reg.DeregisterCheck(c.CheckID); err != nil && !errors.Is(err, registry.ErrNotFound) {
			writeError(w, "Maintenance", err)
			return
		}
		s.log.Info("maintenance disabled", "check", c.CheckID)
		return
	}
	for _, e := range s.reg.Snapshot().NodeChecks(s.self(), c.ServiceID) {
		if e.CheckID == c.CheckID {
			return // already in maintenance
		}
	}
	// Registered through the API source so that maintenance survives a
	// restart, as in Consul.
	if err := s.reg.RegisterCheck(c, registry.SourceAPI); err != nil {
		writeError(w, "Maintenance", err)
		return
	}
	s.log.Info("maintenance enabled", "check", c.CheckID, "reason", c.Notes)
}

// agentServiceChecks is Consul's AgentServiceChecksInfo.
type agentServiceChecks struct {
	AggregatedStatus string
	Service          *agentService
	Checks           []healthCheck
}

// localHealth returns a local service with its checks (the node's own, then
// the service's, without serfHealth, as a Consul agent's local state has
// them) and their aggregate as Consul computes it: maintenance first.
func (s *Server) localHealth(snap *registry.Snapshot, e *registry.ServiceEntry) agentServiceChecks {
	svc := toAgentService(e, s.reg.Config().Datacenter)
	out := agentServiceChecks{Service: &svc, Checks: []healthCheck{}}
	var warning, critical, maint bool
	checks := append(snap.NodeChecks(s.self(), ""), snap.NodeChecks(s.self(), e.ID)...)
	for _, c := range checks {
		if c.CheckID == registry.SerfCheckID {
			continue
		}
		out.Checks = append(out.Checks, toHealthCheck(c))
		if c.CheckID == nodeMaintCheckID || strings.HasPrefix(c.CheckID, serviceMaintPrefix) {
			maint = true
			continue
		}
		switch c.Status {
		case registry.StatusPassing:
		case registry.StatusWarning:
			warning = true
		default:
			critical = true
		}
	}
	switch {
	case maint:
		out.AggregatedStatus = string(registry.StatusMaintenance)
	case critical:
		out.AggregatedStatus = string(registry.StatusCritical)
	case warning:
		out.AggregatedStatus = string(registry.StatusWarning)
	default:
		out.AggregatedStatus = string(registry.StatusPassing)
	}
	return out
}

// healthCode maps an aggregate status onto Consul's codes: 200 passing, 429
// warning, 503 critical or maintenance.
func healthCode(status string) int {
	switch status {
	case string(registry.StatusPassing):
		return http.StatusOK
	case string(registry.StatusWarning):
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}

// wantsText reports whether the client asked for the plain status text
// (Accept: text/plain or ?format=text), as Consul decides.
func wantsText(r *http.Request) bool {
	if strings.HasPrefix(r.Header.Get("Accept"), "text/plain") {
		return true
	}
	return r.URL.Query().Get("format") == "text"
}

func writeStatus(w http.ResponseWriter, r *http.Request, code int, text string, v any) {
	if wantsText(r) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprint(w, text)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	if _, ok := r.URL.Query()["pretty"]; ok {
		enc.SetIndent("", "    ")
	}
	enc.Encode(v)
}

func (s *Server) agentHealthByID(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == "" {
		httpError(w, http.StatusBadRequest, "Missing serviceID")
		return
	}
	snap := s.reg.Snapshot()
	e, found := snap.NodeService(s.self(), id)
	if !found {
		msg := fmt.Sprintf("ServiceId %s not found", id)
		writeStatus(w, r, http.StatusNotFound, msg, agentServiceChecks{AggregatedStatus: string(registry.StatusCritical)})
		return
	}
	info := s.localHealth(snap, e)
	writeStatus(w, r, healthCode(info.AggregatedStatus), info.AggregatedStatus, info)
}

func (s *Server) agentHealthByName(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == "" {
		httpError(w, http.StatusBadRequest, "Missing service Name")
		return
	}
	snap := s.reg.Snapshot()
	code, status := http.StatusNotFound, fmt.Sprintf("ServiceName %s Not Found", name)
	out := []agentServiceChecks{}
	for _, e := range snap.NodeServices(s.self()) {
		if e.Name != name {
			continue
		}
		info := s.localHealth(snap, e)
		out = append(out, info)
		// The worst instance decides: 200 < 429 < 503.
		if c := healthCode(info.AggregatedStatus); code == http.StatusNotFound || c > code {
			code, status = c, info.AggregatedStatus
		}
	}
	writeStatus(w, r, code, status, out)
}

// refuseScripts answers 400 for a registration with a script check when the
// agent does not allow them, as Consul refuses them without
// enable_script_checks. field is the check's place in the request.
func (s *Server) refuseScripts(field string, cr *registry.CheckRegistration) error {
	if s.cfg.EnableScriptChecks || cr == nil || (len(cr.Args) == 0 && len(cr.ScriptArgs) == 0) {
		return nil
	}
	if field != "" {
		field += "."
	}
	return &registry.FieldError{Field: field + "Args", Msg: "script checks are disabled on this agent; start it with -enable-script-checks (enable_script_checks: true) to allow them"}
}

// refuseServiceScripts applies refuseScripts to every check of a service
// registration.
func (s *Server) refuseServiceScripts(def *registry.ServiceDefinition) error {
	if err := s.refuseScripts("Check", def.Check); err != nil {
		return err
	}
	for i, cr := range def.Checks {
		if err := s.refuseScripts(fmt.Sprintf("Checks[%d]", i), cr); err != nil {
			return err
		}
	}
	return nil
}

// keepCheckState carries the status and output of one of this node's
// checks over to its re-registration with the same definition, as Consul
// does (hashicorp/consul#868): Registrator re-registers every service on
// each resync, and a reset to the initial critical would take healthy
// instances out of every answer until their next probe.
func (s *Server) keepCheckState(c *registry.Check) {
	for _, e := range s.reg.Snapshot().NodeChecks(s.self(), c.ServiceID) {
		if e.CheckID == c.CheckID && reflect.DeepEqual(e.Definition, c.Definition) {
			c.Status, c.Output = e.Status, e.Output
			return
		}
	}
}
