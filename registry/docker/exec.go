package docker

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Exec runs commands inside containers through the engine's exec API, for
// the health package's docker checks (Consul's DockerContainerID). It is
// the one part of this package that acts on containers, and it is used
// only for checks that -enable-script-checks allows.
type Exec struct {
	engine *engine
}

// NewExec returns an Exec for a Docker endpoint (unix:///path,
// tcp://host:port or http://host:port); it connects only when a command
// runs. timeout bounds each API call but the output stream, which the
// caller's context bounds.
func NewExec(endpoint string, timeout time.Duration) (*Exec, error) {
	if endpoint == "" {
		endpoint = DefaultConfig().Endpoint
	}
	if timeout <= 0 {
		timeout = DefaultConfig().RequestTimeout
	}
	e, err := newEngine(endpoint, timeout)
	if err != nil {
		return nil, err
	}
	return &Exec{engine: e}, nil
}

// Exec runs cmd in container (an ID or name) without a TTY, as docker exec
// does, copies its stdout and stderr to out, and returns its exit code once
// the engine reports it ended.
func (x *Exec) Exec(ctx context.Context, container string, cmd []string, out io.Writer) (int, error) {
	e := x.engine
	var created struct{ ID string }
	req := map[string]any{"AttachStdout": true, "AttachStderr": true, "Tty": false, "Cmd": cmd}
	if err := e.post(ctx, "/containers/"+url.PathEscape(container)+"/exec", req, http.StatusCreated, &created); err != nil {
		if errors.Is(err, errGone) {
			return 0, fmt.Errorf("docker: container %s: %w", container, errGone)
		}
		return 0, fmt.Errorf("docker: exec in container %s: %w", container, err)
	}
	if created.ID == "" {
		return 0, fmt.Errorf("docker: exec in container %s: the engine returned no exec ID", container)
	}
	if err := e.startExec(ctx, created.ID, out); err != nil {
		return 0, fmt.Errorf("docker: exec in container %s: %w", container, err)
	}
	// The stream ends as the command exits; the engine may record the exit
	// code a moment later.
	for wait := time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		var st struct {
			Running  bool
			ExitCode int
		}
		if err := e.get(ctx, "/exec/"+url.PathEscape(created.ID)+"/json", &st); err != nil {
			return 0, fmt.Errorf("docker: exec in container %s: %w", container, err)
		}
		if !st.Running {
			return st.ExitCode, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// startExec starts an exec attached and copies its output, which the
// engine multiplexes as frames of an 8-byte header (stream, 3 zero bytes,
// big-endian length) and the bytes, until the command ends.
func (e *engine) startExec(ctx context.Context, id string, out io.Writer) error {
	b, _ := json.Marshal(map[string]bool{"Detach": false, "Tty": false})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.base+"/exec/"+url.PathEscape(id)+"/start", bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("POST /exec/%s/start: %s: %s", id, resp.Status, strings.TrimSpace(string(msg)))
	}
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading the output: %w", err)
		}
		n := int64(binary.BigEndian.Uint32(hdr[4:]))
		if _, err := io.CopyN(out, resp.Body, n); err != nil {
			return fmt.Errorf("reading the output: %w", err)
		}
	}
}

// post sends v as JSON to path and decodes the answer, which must have
// status want, into res.
func (e *engine) post(ctx context.Context, path string, v any, want int, res any) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case want:
	case http.StatusNotFound:
		return errGone
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("POST %s: %s: %s", path, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(res); err != nil {
		return fmt.Errorf("POST %s: %w", path, err)
	}
	return nil
}
