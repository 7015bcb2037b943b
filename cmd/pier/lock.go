package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	consul "github.com/hashicorp/consul/api"
)

// pier lock is consul lock: it runs a command while holding a lock (or one
// of N slots of a semaphore) in the KV store, served by the servers' Raft
// state. The key layout is Consul's (PREFIX/.lock for both; a semaphore's
// holders also write PREFIX/<session>), taken with consul/api's Lock and
// Semaphore, so that consul lock and other consul/api users of the same
// prefix interoperate.

const (
	// lockSessionTTL is consul/api's lock session TTL; the session is
	// renewed every half of it while the command runs.
	lockSessionTTL = "15s"
	// lockKillGrace is how long a command has between SIGTERM and SIGKILL
	// once the lock is lost, as consul lock's: short enough that the next
	// holder (who waits out the session's 15 s lock delay) does not run
	// beside it.
	lockKillGrace = 5 * time.Second
	// lockMonitorRetryTime is the pause between retries of the lock's
	// watch after a 500 (an election), as consul lock's.
	lockMonitorRetryTime = time.Second
	// lockSessionTimeout bounds each request of the session (create,
	// renew, destroy). Without it, a renewal sent to an agent that is
	// paused, or cut off without a word, waits for ever, and pier lock
	// never learns that the lock is going: with it, renewal gives up once
	// a whole TTL passed without one (consul/api's RenewPeriodic), and the
	// command gets SIGTERM about 15 s in, before the servers invalidate
	// the session (2x TTL) and well before the next holder may take the
	// lock (the lock delay after that).
	lockSessionTimeout = 5 * time.Second
)

// runLock is the subcommand: the command's exit code is pier's, so a code
// other than 0 ends the process here (main's table maps errors to 1 and 2
// only); the lock is released and the session destroyed before.
func runLock(args []string, stdout, stderr io.Writer) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	code, err := (&locker{stdout: stdout, stderr: stderr, signals: sigs, grace: lockKillGrace}).run(args)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

// locker is one run of pier lock.
type locker struct {
	stdout, stderr io.Writer
	signals        <-chan os.Signal // forwarded to the command
	grace          time.Duration    // between SIGTERM and SIGKILL on a lost lock
	verbose        bool
	interrupt      func() // cancels the requests of the wait for the lock
}

// withContext gives every request ctx, so that cancelling it ends a
// blocking query at once.
type withContext struct {
	base http.RoundTripper
	ctx  context.Context
}

func (t withContext) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.base.RoundTrip(r.WithContext(t.ctx))
}

func (l *locker) info(format string, args ...any) {
	if l.verbose {
		fmt.Fprintf(l.stderr, "pier lock: "+format+"\n", args...)
	}
}

// held abstracts a lock and a semaphore, as consul lock does.
type held struct {
	acquire func(stop <-chan struct{}) (<-chan struct{}, error)
	release func() error
	destroy func() error // deletes the keys when no one else uses them
	inUse   error        // destroy's answer when someone does
	notHeld error        // release's answer when the lock was not held
}

// run answers the command's exit code; an error is pier's own (exit 1 or 2).
func (l *locker) run(args []string) (int, error) {
	var (
		limit        int
		name         string
		timeout      time.Duration
		passStdin    bool
		monitorRetry int
	)
	fs, c, _, err := apiCommand("lock", args, l.stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&limit, "n", 1, "how many may hold the lock at once: above 1, a semaphore of that many slots")
		fs.StringVar(&name, "name", "", "the name of the lock's session (default: one made of the command and prefix)")
		fs.DurationVar(&timeout, "timeout", 0, "give up when the lock is not acquired within this long (0: wait for ever)")
		fs.BoolVar(&l.verbose, "verbose", false, "say on stderr what happens to the lock and the command")
		fs.BoolVar(&passStdin, "pass-stdin", false, "give the command pier's standard input")
		fs.IntVar(&monitorRetry, "monitor-retry", 3, "how many 500 answers in a row (an election) the lock's watch rides out, 1 s apart, before it counts the lock lost")
	})
	if err != nil {
		return 0, err
	}
	switch {
	case fs.NArg() < 2:
		return 0, usageError{"give a key prefix and a command"}
	case limit <= 0:
		return 0, usageError{fmt.Sprintf("-n %d: the number of holders must be at least 1", limit)}
	case timeout < 0:
		return 0, usageError{fmt.Sprintf("-timeout %v: must not be negative", timeout)}
	case monitorRetry < 0:
		return 0, usageError{fmt.Sprintf("-monitor-retry %d: must not be negative", monitorRetry)}
	}
	prefix := strings.TrimPrefix(fs.Arg(0), "/")
	argv := fs.Args()[1:]
	if name == "" {
		name = fmt.Sprintf("pier lock for '%s' at '%s'", strings.Join(argv, " "), prefix)
	}
	// A signal while pier waits for the lock cancels the blocking query in
	// progress (consul lock waits for its end, up to 15 s): the lock's
	// requests carry this context, which only a signal during the wait
	// cancels.
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	def := consul.DefaultConfig()
	hc, err := consul.NewHttpClient(def.Transport, def.TLSConfig)
	if err != nil {
		return 0, err
	}
	hc.Transport = withContext{base: hc.Transport, ctx: ctx}
	defer hc.CloseIdleConnections()
	cc, err := c.consulWith(hc)
	if err != nil {
		return 0, err
	}
	l.interrupt = interrupt

	// The session is this command's own (consul/api would make one per
	// lock and destroy it in the background): renewed while the command
	// runs, destroyed, and waited for, before pier exits; through a client
	// that no signal interrupts, so that it is destroyed in any case.
	shc, err := consul.NewHttpClient(def.Transport, def.TLSConfig)
	if err != nil {
		return 0, err
	}
	shc.Timeout = lockSessionTimeout
	defer shc.CloseIdleConnections()
	sc, err := c.consulWith(shc)
	if err != nil {
		return 0, err
	}
	sessions := sc.Session()
	sid, _, err := sessions.Create(&consul.SessionEntry{Name: name, TTL: lockSessionTTL, Behavior: consul.SessionBehaviorRelease}, nil)
	if err != nil {
		return 0, fmt.Errorf("creating the lock's session: %w", c.consulErr(err))
	}
	stopRenew, renewDone := make(chan struct{}), make(chan struct{})
	var renewErr error
	go func() {
		renewErr = sessions.RenewPeriodic(lockSessionTTL, sid, nil, stopRenew)
		close(renewDone)
	}()
	endSession := func() {
		close(stopRenew)
		<-renewDone // the session is destroyed once renewal returns
		if renewErr != nil {
			// Renewal gave up on its own (the session was destroyed, or
			// the servers were out of reach for a whole TTL): make sure.
			sessions.Destroy(sid, nil)
		}
	}

	h, err := l.setup(cc, prefix, name, sid, limit, timeout, monitorRetry)
	if err != nil {
		endSession()
		return 0, err
	}
	l.info("waiting for the lock")
	lost, interrupted, err := l.acquire(h)
	if lost == nil {
		endSession()
		switch {
		case interrupted:
			return 0, fmt.Errorf("interrupted while waiting for the lock at %s", prefix)
		case err != nil:
			return 0, fmt.Errorf("acquiring the lock at %s: %v", prefix, err)
		}
		return 0, fmt.Errorf("the lock at %s was not acquired within %v", prefix, timeout)
	}
	l.info("acquired the lock at %s; starting the command", prefix)

	var code int
	var runErr error
	if interrupted {
		runErr = fmt.Errorf("interrupted while acquiring the lock at %s; the command was not run", prefix)
	} else {
		code, runErr = l.runChild(argv, passStdin, lost, renewDone, prefix)
	}

	if err := h.release(); err != nil && !errors.Is(err, h.notHeld) {
		fmt.Fprintf(l.stderr, "pier lock: releasing the lock at %s: %v\n", prefix, err)
	}
	// The watch of the lock ends once the release changes the key.
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
	}
	if err := h.destroy(); err != nil && !errors.Is(err, h.inUse) {
		fmt.Fprintf(l.stderr, "pier lock: cleaning up the lock at %s: %v\n", prefix, err)
	}
	endSession()
	l.info("released the lock at %s", prefix)
	return code, runErr
}

// setup makes the lock (limit 1) or the semaphore, with Consul's layout.
func (l *locker) setup(cc *consul.Client, prefix, name, sid string, limit int, timeout time.Duration, retries int) (*held, error) {
	if limit == 1 {
		// A lock at PREFIX/.lock, the semaphore's key, as consul lock
		// does: a lock and a semaphore on one prefix then conflict, and
		// the second says so, instead of both running.
		opts := &consul.LockOptions{Key: path.Join(prefix, consul.DefaultSemaphoreKey), Session: sid, SessionName: name,
			MonitorRetries: retries, MonitorRetryTime: lockMonitorRetryTime, LockTryOnce: timeout > 0, LockWaitTime: timeout}
		lk, err := cc.LockOpts(opts)
		if err != nil {
			return nil, fmt.Errorf("setting up the lock: %w", err)
		}
		l.info("lock at %s", opts.Key)
		return &held{acquire: lk.Lock, release: lk.Unlock, destroy: lk.Destroy, inUse: consul.ErrLockInUse, notHeld: consul.ErrLockNotHeld}, nil
	}
	opts := &consul.SemaphoreOptions{Prefix: prefix, Limit: limit, Session: sid, SessionName: name,
		MonitorRetries: retries, MonitorRetryTime: lockMonitorRetryTime, SemaphoreTryOnce: timeout > 0, SemaphoreWaitTime: timeout}
	sem, err := cc.SemaphoreOpts(opts)
	if err != nil {
		return nil, fmt.Errorf("setting up the semaphore: %w", err)
	}
	l.info("semaphore of %d slots at %s", limit, prefix)
	return &held{acquire: sem.Acquire, release: sem.Release, destroy: sem.Destroy, inUse: consul.ErrSemaphoreInUse, notHeld: consul.ErrSemaphoreNotHeld}, nil
}

// acquire takes the lock; a signal meanwhile stops the wait at once.
// interrupted says a signal came, also when the lock was acquired all the
// same (then its release fails, and destroying the session frees it).
func (l *locker) acquire(h *held) (lost <-chan struct{}, interrupted bool, err error) {
	stop, done := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-l.signals:
			close(stop)
			l.interrupt()
		case <-done:
		}
	}()
	lost, err = h.acquire(stop)
	close(done)
	wg.Wait()
	select {
	case <-stop:
		interrupted = true
	default:
	}
	return lost, interrupted, err
}

// runChild runs the command with the lock held: one argument through the
// shell ($SHELL, else /bin/sh, -c), more as given. SIGINT and SIGTERM to
// pier go to the command; a lost lock (the key taken from the session, or
// the session gone) sends it SIGTERM, then SIGKILL after the grace. It
// answers the command's exit code (128+n for a command ended by signal n).
func (l *locker) runChild(argv []string, passStdin bool, lost, renewDone <-chan struct{}, prefix string) (int, error) {
	var cmd *exec.Cmd
	if len(argv) == 1 {
		shell := os.Getenv("SHELL")
		if shell == "" {
			shell = "/bin/sh"
		}
		cmd = exec.Command(shell, "-c", argv[0])
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = append(os.Environ(), "CONSUL_LOCK_HELD=true")
	if passStdin {
		cmd.Stdin = os.Stdin
	}
	cmd.Stdout, cmd.Stderr = l.stdout, l.stderr
	// A grandchild that keeps the output open must not keep pier waiting
	// once the command itself has exited.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %v", argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	lostLock := false
	var kill <-chan time.Time
	for {
		select {
		case sig := <-l.signals:
			l.info("forwarding %v to the command", sig)
			if err := cmd.Process.Signal(sig); err != nil {
				fmt.Fprintf(l.stderr, "pier lock: forwarding %v: %v\n", sig, err)
			}
			continue
		case <-lost:
			lost = nil
		case <-renewDone:
			// The session could not be renewed (it was destroyed, or the
			// servers were out of reach for its whole TTL): the lock is
			// as good as lost.
			l.info("the lock's session ended")
			renewDone = nil
		case <-kill:
			l.info("the command did not exit within %v; sending SIGKILL", l.grace)
			cmd.Process.Kill()
			kill = nil
			continue
		case err := <-exited:
			code := childExitCode(cmd, err)
			if lostLock {
				fmt.Fprintf(l.stderr, "pier lock: the lock at %s was lost while the command ran; it exited with %d\n", prefix, code)
				if code == 0 {
					code = 1
				}
			}
			return code, nil
		}
		if !lostLock {
			lostLock = true
			fmt.Fprintf(l.stderr, "pier lock: the lock at %s was lost; sending SIGTERM to the command\n", prefix)
			cmd.Process.Signal(syscall.SIGTERM)
			kill = time.After(l.grace)
		}
	}
}

// childExitCode is the command's exit status as a shell reports it.
func childExitCode(cmd *exec.Cmd, err error) int {
	if cmd.ProcessState == nil {
		return 1
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if code := cmd.ProcessState.ExitCode(); code >= 0 {
		return code
	}
	if err != nil {
		return 1
	}
	return 0
}
