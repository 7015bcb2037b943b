package docker

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// checkerImage builds an image FROM scratch with deploy/testserver (what
// keeps the container running) and testdata/checker (the checked program);
// it is removed at the end of t.
func checkerImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	here := filepath.Dir(file)
	for _, b := range []struct{ out, src string }{
		{"testserver", filepath.Join(here, "..", "..", "deploy", "testserver")},
		{"checker", filepath.Join(here, "testdata", "checker")},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.src)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.src, err, out)
		}
	}
	df := "FROM scratch\nCOPY testserver checker /\nENTRYPOINT [\"/testserver\"]\nCMD [\"-addr\", \":8080\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	tag := "pier-test-checker-" + unique() + ":latest"
	docker(t, "build", "-q", "-t", tag, dir)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	return tag
}

// dockerTouch creates path in a running container (FROM scratch has no
// shell to do it with): docker cp of an empty file.
func dockerTouch(t *testing.T, container, path string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	docker(t, "cp", f, container+":"+path)
}

// TestExec runs a program inside a real container through the engine's
// exec API: exit code and output (stdout and stderr, demultiplexed) come
// back, and they follow the container's state, not the host's.
func TestExec(t *testing.T) {
	requireDocker(t)
	image := checkerImage(t)
	name := run(t, image)
	id := docker(t, "inspect", "-f", "{{.Id}}", name)
	x, err := NewExec(endpoint(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.engine.hc.CloseIdleConnections) // an agent's Exec lives as long as the process
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	try := func(container string, wantCode int, wantOut ...string) {
		t.Helper()
		var out bytes.Buffer
		code, err := x.Exec(ctx, container, []string{"/checker"}, &out)
		if err != nil {
			t.Fatalf("Exec in %s: %v", container, err)
		}
		if code != wantCode {
			t.Errorf("exit code %d, want %d (output %q)", code, wantCode, out.String())
		}
		for _, w := range wantOut {
			if !strings.Contains(out.String(), w) {
				t.Errorf("output %q lacks %q", out.String(), w)
			}
		}
	}
	// The hostname inside a container is its short ID: the program ran there.
	try(name, 2, "neither /ready nor /warn\n", "checker in "+id[:12]+"\n")
	dockerTouch(t, name, "/warn")
	try(id, 1, "found /warn\n")
	dockerTouch(t, name, "/ready")
	try(id[:12], 0, "found /ready\n")

	var out bytes.Buffer
	if _, err := x.Exec(ctx, "pier-test-no-such-"+unique(), []string{"/checker"}, &out); err == nil || !strings.Contains(err.Error(), "no such container") {
		t.Errorf("Exec in a missing container: %v, want no such container", err)
	}
	code, err := x.Exec(ctx, name, []string{"/no-such-program"}, &out)
	if err == nil && code < 2 {
		// The engine reports 126 or 127, as a shell would: critical.
		t.Errorf("Exec of a missing program: exit %d, no error (output %q)", code, out.String())
	}
	docker(t, "stop", "-t", "1", name)
	if _, err := x.Exec(ctx, name, []string{"/checker"}, &out); err == nil {
		t.Error("Exec in a stopped container: no error")
	}
}

// BenchmarkExec is the cost of one docker check: create, start and inspect
// an exec of a small program in a running container.
func BenchmarkExec(b *testing.B) {
	if _, err := exec.LookPath("docker"); err != nil {
		b.Skip("no docker CLI")
	}
	x, err := NewExec(endpoint(), 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(x.engine.hc.CloseIdleConnections)
	if err := x.engine.ping(context.Background()); err != nil {
		b.Skipf("no Docker engine answers: %v", err)
	}
	name := os.Getenv("PIER_BENCH_CONTAINER")
	if name == "" {
		b.Skip("set PIER_BENCH_CONTAINER to a running container with /checker (see TestExec's image)")
	}
	var out bytes.Buffer
	for b.Loop() {
		out.Reset()
		if _, err := x.Exec(context.Background(), name, []string{"/checker"}, &out); err != nil {
			b.Fatal(err)
		}
	}
}
