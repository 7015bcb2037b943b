package health

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"

	"github.com/pier-dev/pier/registry"
)

// probeScript runs Args (without a shell, as Consul does): exit code 0 is
// passing, 1 warning, anything else critical. The output is the first
// OutputMaxSize bytes of stdout and stderr together. On timeout the whole
// process group is killed, so that a script's children do not linger.
func (r *Runner) probeScript(ctx context.Context, args []string, timeout time.Duration) (registry.Status, string) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	out := &limitedBuffer{max: r.cfg.OutputMaxSize}
	cmd.Stdout, cmd.Stderr = out, out
	killGroup(cmd)
	cmd.WaitDelay = time.Second // do not wait on pipes a killed script's children hold
	err := cmd.Run()
	if ctx.Err() != nil {
		return registry.StatusCritical, fmt.Sprintf("Timed out (%s) running check", timeout)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		return registry.StatusPassing, out.String()
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return registry.StatusWarning, out.String()
	case errors.As(err, &ee):
		return registry.StatusCritical, out.String()
	}
	return registry.StatusCritical, fmt.Sprintf("running %q: %v", args[0], err)
}

// probeDocker runs Args inside the container DockerContainerID through the
// Docker engine, as Consul's docker checks do, with the exit codes of a
// script check. On timeout the command may go on inside the container: the
// engine has no way to stop one exec.
func (r *Runner) probeDocker(ctx context.Context, d *registry.CheckDefinition, timeout time.Duration) (registry.Status, string) {
	if r.cfg.Docker == nil {
		return registry.StatusCritical, "no Docker engine configured on this agent for docker checks"
	}
	out := &limitedBuffer{max: r.cfg.OutputMaxSize}
	code, err := r.cfg.Docker.Exec(ctx, d.DockerContainerID, d.Args, out)
	switch {
	case ctx.Err() != nil:
		return registry.StatusCritical, fmt.Sprintf("Timed out (%s) running check in container %s", timeout, d.DockerContainerID)
	case err != nil:
		return registry.StatusCritical, err.Error()
	case code == 0:
		return registry.StatusPassing, out.String()
	case code == 1:
		return registry.StatusWarning, out.String()
	}
	return registry.StatusCritical, out.String()
}

// limitedBuffer keeps the first max bytes written to it and drops the rest
// (without failing the writer, which would kill the script with SIGPIPE).
type limitedBuffer struct {
	max int
	buf []byte
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string { return string(b.buf) }
