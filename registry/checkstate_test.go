package registry

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A TTL check's last result survives a restart until it would have run out;
// one that ran out while the agent was down, and the state of a check that
// is gone, do not come back.
func TestCheckStateRestart(t *testing.T) {
	dir := t.TempDir()
	r1 := rtNew(t, dir)
	rtReg(t, r1, SourceAPI, `{"ID":"job-1","Name":"job","Port":1,"Checks":[{"TTL":"30s"},{"TTL":"1s"},{"TTL":"30s"}]}`)
	if err := r1.RegisterCheck(Check{CheckID: "alone", Name: "alone", Status: StatusCritical, Definition: CheckDefinition{TTL: Duration(time.Minute)}}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	if err := r1.RegisterCheck(Check{CheckID: "gone", Name: "gone", Status: StatusCritical, Definition: CheckDefinition{TTL: Duration(time.Minute)}}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	save := func(id string, st Status, out string, exp time.Time) {
		t.Helper()
		if err := r1.UpdateCheck(id, st, out); err != nil {
			t.Fatal(err)
		}
		if err := r1.SaveCheckState(CheckState{CheckID: id, Status: st, Output: out, Expires: exp}); err != nil {
			t.Fatalf("SaveCheckState(%s): %v", id, err)
		}
	}
	save("service:job-1:1", StatusPassing, "alive", now.Add(30*time.Second))
	save("service:job-1:2", StatusPassing, "short", now.Add(-time.Second)) // ran out
	save("service:job-1:3", StatusWarning, "first", now.Add(30*time.Second))
	save("service:job-1:3", StatusPassing, "second", now.Add(31*time.Second)) // the last one counts
	save("alone", StatusWarning, "slow", now.Add(time.Minute))
	save("gone", StatusPassing, "x", now.Add(time.Minute))
	if err := r1.DeregisterCheck("gone"); err != nil {
		t.Fatal(err)
	}
	if err := r1.SaveCheckState(CheckState{CheckID: "nope", Status: StatusPassing}); err == nil {
		t.Fatal("SaveCheckState of an unknown check: no error")
	}

	r2 := rtNew(t, dir)
	snap := r2.Snapshot()
	for _, w := range []struct {
		svc, id string
		st      Status
		out     string
		exp     time.Time
	}{
		{"job-1", "service:job-1:1", StatusPassing, "alive", now.Add(30 * time.Second)},
		{"job-1", "service:job-1:2", StatusCritical, "", time.Time{}},
		{"job-1", "service:job-1:3", StatusPassing, "second", now.Add(31 * time.Second)},
		{"", "alone", StatusWarning, "slow", now.Add(time.Minute)},
	} {
		c := rtCheck(t, snap, w.svc, w.id)
		if c.Status != w.st || c.Output != w.out {
			t.Errorf("%s after restart: %s %q, want %s %q", w.id, c.Status, c.Output, w.st, w.out)
		}
		st, ok := r2.RestoredCheckState(w.id)
		if ok != !w.exp.IsZero() || (ok && !st.Expires.Equal(w.exp)) {
			t.Errorf("%s: RestoredCheckState = %+v %v, want expiry %v", w.id, st, ok, w.exp)
		}
		if _, again := r2.RestoredCheckState(w.id); again {
			t.Errorf("%s: RestoredCheckState answered twice", w.id)
		}
	}
	if _, ok := r2.RestoredCheckState("gone"); ok {
		t.Error("a deregistered check's state came back")
	}
	if fs := rtFiles(t, filepath.Join(dir, "checks", "state")); len(fs) != 3 {
		t.Errorf("state files after restart: %v (want the 3 that have not run out)", fs)
	}

	// A re-registration that starts the check over (a changed definition)
	// drops its state; the same definition, carried over by the API, keeps it.
	rtReg(t, r2, SourceAPI, `{"ID":"job-1","Name":"job","Port":1,"Checks":[{"TTL":"30s"},{"TTL":"1s"},{"TTL":"45s"}]}`)
	r3 := rtNew(t, dir)
	if c := rtCheck(t, r3.Snapshot(), "job-1", "service:job-1:3"); c.Status != StatusCritical {
		t.Errorf("changed check after restart: %s %q, want critical", c.Status, c.Output)
	}
	if c := rtCheck(t, r3.Snapshot(), "job-1", "service:job-1:1"); c.Status != StatusCritical {
		// The registration above gave it the initial status: it started over too.
		t.Errorf("re-registered check after restart: %s %q", c.Status, c.Output)
	}
	rtDereg(t, r3, "job-1")
	if err := r3.DeregisterCheck("alone"); err != nil {
		t.Fatal(err)
	}
	if fs := rtFiles(t, filepath.Join(dir, "checks", "state")); len(fs) != 0 {
		t.Errorf("state files left after deregistration: %v", fs)
	}
}

// A damaged state file is dropped with a warning: the check starts from its
// initial status, and the agent starts.
func TestCheckStateCorrupt(t *testing.T) {
	dir := t.TempDir()
	r1 := rtNew(t, dir)
	if err := r1.RegisterCheck(Check{CheckID: "c", Name: "c", Status: StatusCritical, Definition: CheckDefinition{TTL: Duration(time.Minute)}}, SourceAPI); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"CheckID":"c","Status":"passing","Expires":"`, `{"CheckID":"other","Status":"passing","Expires":"2999-01-01T00:00:00Z"}`,
		`{"CheckID":"c","Status":"sunny","Expires":"2999-01-01T00:00:00Z"}`} {
		path := filepath.Join(dir, "checks", "state", fileName("c"))
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil { // made at the first write of a state
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		r := rtNew(t, dir)
		if c := rtCheck(t, r.Snapshot(), "", "c"); c.Status != StatusCritical {
			t.Errorf("with state file %s: %s", bad, c.Status)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("state file %s not removed: %v", bad, err)
		}
	}
}
