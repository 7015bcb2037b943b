package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"time"
)

// CheckState is a TTL check's last reported result and when it runs out.
// It is kept in the data dir so that an agent restarted within a TTL does
// not turn the checks of applications that keep sending heartbeats critical
// until their next one, as Consul does (agent persistCheckState).
type CheckState struct {
	CheckID string
	Status  Status
	Output  string
	Expires time.Time
}

func (s *store) statePath(id string) string {
	return filepath.Join(s.dir, "checks", "state", fileName(id))
}

// saveState writes without fsync: the file only spares a restarted agent a
// critical spell, and a heartbeat every few seconds per check should not
// cost a disk flush each. A torn file is dropped when read.
func (s *store) saveState(st CheckState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	path := s.statePath(st.CheckID)
	tmp := path + ".tmp"
	f, err := createFile(tmp)
	if err == nil {
		_, err = f.Write(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		os.Remove(tmp) // a part written to a full disk holds space
		return fmt.Errorf("registry: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("registry: writing %s: %w", path, err)
	}
	return nil
}

func (s *store) removeState(id string) error {
	if err := os.Remove(s.statePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("registry: %w", err)
	}
	return nil
}

// loadStates returns the check states that have not run out by now. Unlike
// a registration, a state file that cannot be read is removed with a
// warning rather than stopping the agent: the check starts from its initial
// status instead, as it would have without the file.
func (s *store) loadStates(now time.Time, warn func(path string, err error)) map[string]CheckState {
	dir := filepath.Join(s.dir, "checks", "state")
	out := map[string]CheckState{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			warn(dir, err)
		}
		return out
	}
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if e.IsDir() {
			continue
		}
		var st CheckState
		b, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err == nil && (st.CheckID == "" || fileName(st.CheckID) != e.Name()) {
			err = errors.New("not a check state")
		}
		if err == nil {
			_, err = ParseStatus(string(st.Status))
		}
		switch {
		case err != nil:
			warn(path, err)
			os.Remove(path)
		case !now.Before(st.Expires):
			os.Remove(path) // ran out while the agent was down
		default:
			out[st.CheckID] = st
		}
	}
	return out
}

// SaveCheckState records the result a TTL check of this node was given and
// when it runs out; the health runner calls it on every update. A check
// that is unknown or has no TTL is ErrNotFound.
func (r *Registry) SaveCheckState(st CheckState) error {
	r.stateMu.Lock() // one check's files are written in the order of its updates
	defer r.stateMu.Unlock()
	r.mu.Lock()
	lc, ok := r.localChecks[st.CheckID]
	store := r.store
	r.mu.Unlock()
	if !ok || lc.Check.Definition.TTL <= 0 {
		return fmt.Errorf("registry: check %q has no TTL: %w", st.CheckID, ErrNotFound)
	}
	if store == nil {
		return nil
	}
	if err := store.saveState(st); err != nil {
		return err
	}
	// A deregistration between the look and the write removed the file
	// before it was written: remove it again.
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.localChecks[st.CheckID]; !ok {
		return store.removeState(st.CheckID)
	}
	return nil
}

// RestoredCheckState returns, once, the state that a TTL check took from
// the data dir when it was registered after the agent started, so that the
// health runner expires it when it would have expired had the agent not
// stopped.
func (r *Registry) RestoredCheckState(id string) (CheckState, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, ok := r.restored[id]
	delete(r.restored, id)
	return st, ok
}

// restoreState gives a TTL check registered for the first time since the
// agent started the state it had when the agent stopped, if that has not
// run out. A re-registration that does not carry the check's status over
// (a changed definition) drops the saved state: the check starts over, and
// a restart must not bring the old result back.
func (r *Registry) restoreState(c *Check) {
	if lc, known := r.localChecks[c.CheckID]; known {
		if lc.Check.Status != c.Status || lc.Check.Output != c.Output {
			// a changed definition: the check starts over
			r.dropState(c.CheckID, lc.Check.Definition.TTL > 0 || c.Definition.TTL > 0)
		}
		return
	}
	st, ok := r.saved[c.CheckID]
	if !ok {
		return
	}
	delete(r.saved, c.CheckID)
	if c.Definition.TTL <= 0 || !time.Now().Before(st.Expires) {
		r.dropState(c.CheckID, true)
		return
	}
	c.Status, c.Output = st.Status, st.Output
	r.restored[c.CheckID] = st
}

// dropState forgets a check's saved state, when the check is gone or
// starts over. Only TTL checks have a file to remove: the others cost no
// system call.
func (r *Registry) dropState(id string, ttl bool) {
	delete(r.saved, id)
	delete(r.restored, id)
	if r.store != nil && ttl {
		if err := r.store.removeState(id); err != nil {
			r.log.Warn("removing a check state", "check", id, "err", err)
		}
	}
}

// CarryCheckState gives c the status and output of this node's check with
// the same ID and definition, if there is one: registering a check again
// without changing it (a config reload) must not reset it to its initial
// status.
func (r *Registry) CarryCheckState(c *Check) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if lc, ok := r.localChecks[c.CheckID]; ok && reflect.DeepEqual(lc.Check.Definition, c.Definition) {
		c.Status, c.Output = lc.Check.Status, lc.Check.Output
	}
}
