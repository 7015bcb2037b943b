package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// startCost measures what starting one node costs, without the noise of
// 99 others starting beside it: a first node runs, then n nodes start one
// after the other, each as the run starts them (a fresh data dir, -join
// to the first), and each is stopped once it lists the first node, i.e.
// once its join's push/pull is done. For each start it records, when the
// node said it was running, the CPU its process had used
// (/proc/PID/task/*/schedstat) and its minor page faults (/proc/PID/stat),
// then the same when it listed the first node, and the wall time from exec
// until then.
func startCost(args []string) error {
	fs := flag.NewFlagSet("start", flag.ExitOnError)
	pierBin := fs.String("pier", "", "the pier binary (with -kind pier)")
	kind := fs.String("kind", "pier", "pier or plain")
	n := fs.Int("n", 20, "starts, one after the other")
	join := fs.String("join", "", "a running node's gossip address to join (empty: start one)")
	fs.Parse(args)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "pier-start-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	command := func(i int, join string) *exec.Cmd {
		name := fmt.Sprintf("n%03d", i)
		ip := fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
		if *kind == "pier" {
			argv := []string{"agent", "-node", name, "-bind", ip, "-client", ip, "-serf-lan-port", "0", "-http-port", "0",
				"-dns-port", "0", "-data-dir", filepath.Join(work, name)}
			if join != "" {
				argv = append(argv, "-join", join)
			}
			return exec.CommandContext(ctx, *pierBin, argv...)
		}
		argv := []string{"plain", "-name", name, "-bind", ip}
		if join != "" {
			argv = append(argv, "-join", join)
		}
		return exec.CommandContext(ctx, self, argv...)
	}
	// start runs node i and returns its output's lines, closed when it ends.
	start := func(i int, join string) (*exec.Cmd, <-chan string, error) {
		cmd := command(i, join)
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		// A plain node runs until its stdin ends.
		if _, err := cmd.StdinPipe(); err != nil {
			return nil, nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		go func() { cmd.Wait(); pw.Close() }()
		lines := make(chan string, 64)
		go func() {
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
			io.Copy(io.Discard, pr)
		}()
		return cmd, lines, nil
	}
	isRunning := func(l string) bool {
		return strings.HasPrefix(l, "running ") || strings.Contains(l, `msg="pier agent running"`)
	}
	joinAddr := *join
	if joinAddr == "" {
		first, lines, err := start(0, "")
		if err != nil {
			return err
		}
		defer first.Process.Kill()
		timeout := time.After(30 * time.Second)
		for joinAddr == "" {
			select {
			case l, ok := <-lines:
				if !ok {
					return fmt.Errorf("the first node ended")
				}
				if m := gossipAddr.FindStringSubmatch(l); m != nil && isRunning(l) {
					joinAddr = m[1]
				}
			case <-timeout:
				return fmt.Errorf("the first node did not start")
			}
		}
		go func() {
			for range lines {
			}
		}()
	}
	fmt.Printf("%s start: %d starts one after the other; load average at start: %s\n", *kind, *n, loadavg())
	var runCPU, runFaults, joinCPU, joinFaults, joinWall []float64
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for i := 1; i <= *n; i++ {
		t0 := time.Now()
		cmd, lines, err := start(i, joinAddr)
		if err != nil {
			return err
		}
		var log bytes.Buffer
		ran, joined := false, false
		timeout := time.After(30 * time.Second)
		for !ran || !joined {
			select {
			case l, ok := <-lines:
				if !ok {
					return fmt.Errorf("start %d ended:\n%s", i, log.String())
				}
				log.WriteString(l + "\n")
				pid := cmd.Process.Pid
				if !ran && isRunning(l) {
					ran = true
					runCPU, runFaults = append(runCPU, ms(processCPU(pid))), append(runFaults, float64(minorFaults(pid)))
				}
				if m := memberLine.FindStringSubmatch(l); !joined && m != nil && m[1] == "alive" && m[2] != fmt.Sprintf("n%03d", i) {
					joined = true
					joinWall = append(joinWall, ms(time.Since(t0)))
					joinCPU, joinFaults = append(joinCPU, ms(processCPU(pid))), append(joinFaults, float64(minorFaults(pid)))
				}
			case <-timeout:
				cmd.Process.Kill()
				return fmt.Errorf("start %d did not run and join:\n%s", i, log.String())
			}
		}
		cmd.Process.Kill()
		for range lines {
		}
		// Let the first node see it go, so that the next start is alone.
		time.Sleep(200 * time.Millisecond)
	}
	stat := func(v []float64) string {
		slices.Sort(v)
		return fmt.Sprintf("median %.1f (%.1f–%.1f)", v[len(v)/2], v[0], v[len(v)-1])
	}
	fmt.Printf("%s start: until running: CPU ms %s; minor faults %s\n", *kind, stat(runCPU), stat(runFaults))
	fmt.Printf("%s start: until it lists the first node: CPU ms %s; minor faults %s; wall ms %s\n", *kind, stat(joinCPU), stat(joinFaults), stat(joinWall))
	fmt.Printf("%s start: load average at end: %s\n", *kind, loadavg())
	return nil
}

// minorFaults is a process's minor page faults so far (/proc/PID/stat,
// field 10, all its threads).
func minorFaults(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	if len(f) < 8 {
		return 0
	}
	v, _ := strconv.ParseInt(f[7], 10, 64)
	return v
}
