package registry

// RestorePersistedChecks registers again the persisted standalone checks
// that New could not load because their service was not registered yet:
// checks (maintenance among them, as `pier maint` makes it) on services from
// config files, which the agent registers after New. It is called once,
// after the config services; checks already loaded are left alone, and a
// check whose service is still unknown stays on disk for a later start.
//
// It lives in its own file for the health work (issue 4); New could do it
// itself once config services are part of Config.
func (r *Registry) RestorePersistedChecks() error {
	if r.store == nil {
		return nil
	}
	_, checks, err := r.store.load()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	tx := r.begin()
	for _, p := range checks {
		if _, ok := r.localChecks[p.Check.CheckID]; ok {
			continue
		}
		if err := r.registerCheckLocked(tx, p.Check, SourceAPI); err != nil {
			r.log.Warn("persisted check not restored", "check", p.Check.CheckID, "err", err)
			continue
		}
		r.log.Info("persisted check restored on a config service", "check", p.Check.CheckID, "service", p.Check.ServiceID)
	}
	tx.commit()
	return nil
}
