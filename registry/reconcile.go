package registry

import (
	"errors"
	"fmt"
)

// ConfigService is one service of the agent's config files with its checks,
// and the file it came from (errors name it).
type ConfigService struct {
	File    string
	Service Service
	Checks  []Check
}

// SyncConfigServices makes this node's config-file services what defs
// says, as Consul's reload does: services in defs are registered (a check
// whose definition is unchanged keeps its status and output, so a reload
// does not reset a passing check to critical), config services missing
// from defs are deregistered, and services from the API or Docker are left
// alone. It goes on past a bad definition and answers every error and how
// many services it removed.
func (r *Registry) SyncConfigServices(defs []ConfigService) (removed int, err error) {
	var errs []error
	want := make(map[string]bool, len(defs))
	for _, d := range defs {
		want[d.Service.ID] = true
		checks := append([]Check(nil), d.Checks...)
		for i := range checks {
			r.CarryCheckState(&checks[i])
		}
		if err := r.RegisterService(d.Service, checks, SourceConfig); err != nil {
			errs = append(errs, fmt.Errorf("config file %s: service %q: %w", d.File, d.Service.ID, err))
		}
	}
	for _, e := range r.Snapshot().NodeServices(r.cfg.NodeName) {
		if src, _ := r.LocalSource(e.ID); src != SourceConfig || want[e.ID] {
			continue
		}
		if err := r.DeregisterService(e.ID); err != nil {
			errs = append(errs, fmt.Errorf("service %q, gone from the config files: %w", e.ID, err))
		} else {
			removed++
		}
	}
	return removed, errors.Join(errs...)
}
