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
	pierBin := fs.String("pier", "", "the pier binary (with -kind pier); several, comma-separated, are started in turn")
	kind := fs.String("kind", "pier", "pier or plain; pier,plain starts both in turn")
	n := fs.Int("n", 20, "starts of each build, one after the other")
	join := fs.String("join", "", "a running node's gossip address to join (empty: start one per build)")
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
	// The builds measured: their starts are interleaved, one of each in
	// turn, so that they see the same machine.
	type build struct {
		label, kind, bin, join string
		runCPU, runFaults      []float64
		joinCPU, joinFaults    []float64
		joinWall               []float64
	}
	var builds []*build
	for _, k := range strings.Split(*kind, ",") {
		if k != "pier" {
			builds = append(builds, &build{label: k, kind: k})
			continue
		}
		for _, b := range strings.Split(*pierBin, ",") {
			builds = append(builds, &build{label: "pier " + b, kind: k, bin: b})
		}
	}
	command := func(b *build, i int, join string) *exec.Cmd {
		name := fmt.Sprintf("n%03d", i)
		ip := fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
		if b.kind == "pier" {
			argv := []string{"agent", "-node", name, "-bind", ip, "-client", ip, "-serf-lan-port", "0", "-http-port", "0",
				"-dns-port", "0", "-data-dir", filepath.Join(work, name)}
			if join != "" {
				argv = append(argv, "-join", join)
			}
			return exec.CommandContext(ctx, b.bin, argv...)
		}
		argv := []string{"plain", "-name", name, "-bind", ip}
		if join != "" {
			argv = append(argv, "-join", join)
		}
		return exec.CommandContext(ctx, self, argv...)
	}
	// start runs node i and returns its output's lines, closed when it ends.
	start := func(b *build, i int, join string) (*exec.Cmd, <-chan string, error) {
		cmd := command(b, i, join)
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
	for bi, b := range builds {
		b.join = *join
		if b.join != "" {
			continue
		}
		first, lines, err := start(b, 250*bi, "")
		if err != nil {
			return err
		}
		defer first.Process.Kill()
		timeout := time.After(30 * time.Second)
		for b.join == "" {
			select {
			case l, ok := <-lines:
				if !ok {
					return fmt.Errorf("the first node of %s ended", b.label)
				}
				if m := gossipAddr.FindStringSubmatch(l); m != nil && isRunning(l) {
					b.join = m[1]
				}
			case <-timeout:
				return fmt.Errorf("the first node of %s did not start", b.label)
			}
		}
		go func() {
			for range lines {
			}
		}()
	}
	fmt.Printf("start: %d starts of each of %d builds, one after the other; load average at start: %s\n", *n, len(builds), loadavg())
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for i := 1; i <= *n; i++ {
		for bi, b := range builds {
			id := 250*bi + i
			t0 := time.Now()
			cmd, lines, err := start(b, id, b.join)
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
						return fmt.Errorf("start %d of %s ended:\n%s", i, b.label, log.String())
					}
					log.WriteString(l + "\n")
					pid := cmd.Process.Pid
					if !ran && isRunning(l) {
						ran = true
						b.runCPU, b.runFaults = append(b.runCPU, ms(processCPU(pid))), append(b.runFaults, float64(minorFaults(pid)))
					}
					if m := memberLine.FindStringSubmatch(l); !joined && m != nil && m[1] == "alive" && m[2] != fmt.Sprintf("n%03d", id) {
						joined = true
						b.joinWall = append(b.joinWall, ms(time.Since(t0)))
						b.joinCPU, b.joinFaults = append(b.joinCPU, ms(processCPU(pid))), append(b.joinFaults, float64(minorFaults(pid)))
					}
				case <-timeout:
					cmd.Process.Kill()
					return fmt.Errorf("start %d of %s did not run and join:\n%s", i, b.label, log.String())
				}
			}
			cmd.Process.Kill()
			for range lines {
			}
			// Let the first node see it go, so that the next start is alone.
			time.Sleep(200 * time.Millisecond)
		}
	}
	stat := func(v []float64) string {
		slices.Sort(v)
		return fmt.Sprintf("median %.1f (%.1f–%.1f)", v[len(v)/2], v[0], v[len(v)-1])
	}
	for _, b := range builds {
		fmt.Printf("%s start: until running: CPU ms %s; minor faults %s\n", b.label, stat(b.runCPU), stat(b.runFaults))
		fmt.Printf("%s start: until it lists the first node: CPU ms %s; minor faults %s; wall ms %s\n", b.label, stat(b.joinCPU), stat(b.joinFaults), stat(b.joinWall))
	}
	fmt.Printf("start: load average at end: %s\n", loadavg())
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
