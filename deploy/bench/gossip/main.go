// Command gossip measures join convergence and write propagation of a
// cluster of separate processes on loopback addresses, pier agents beside
// plain memberlist nodes (v0.6.0, DefaultLANConfig) in the same run.
//
//	gossip run -pier PATH -n 50 -writes 100   (what deploy/bench/gossip.sh runs)
//	gossip start -pier PATH -n 20            (what one start costs, one after the other)
//	gossip plain -name n1 -bind 127.0.0.11 -join ADDR   (one plain node; the run starts these)
//
// Join: the first node starts, then the other n-1 all at once, each joining
// the first. Every node reports each member it sees come and go (pier's
// "member alive/failed/left" log lines; the plain node prints the same), and
// the join has converged when every node lists every member.
// Writes: one service registration (pier) or one broadcast (plain) every
// 100 ms on a node taken in turn; a write has propagated when every node has
// it: pier's nodes are followed with a blocking query on
// /v1/catalog/services, plain nodes print what they receive.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gossip run|start|plain [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(os.Args[2:])
	case "plain":
		err = plain(os.Args[2:])
	case "start":
		err = startCost(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gossip:", err)
		os.Exit(1)
	}
}

// plain is one memberlist node with DefaultLANConfig. It prints
// "member alive NAME" / "member failed NAME" as pier logs them, reads
// "put KEY" lines on stdin and broadcasts KEY, and prints "got KEY" when a
// broadcast arrives.
func plain(args []string) error {
	fs := flag.NewFlagSet("plain", flag.ExitOnError)
	name := fs.String("name", "", "node name")
	bind := fs.String("bind", "127.0.0.1", "address")
	port := fs.Int("port", 0, "port (0: a free one)")
	join := fs.String("join", "", "address to join")
	fs.Parse(args)
	out := &lineWriter{w: os.Stdout}
	d := &plainDelegate{out: out, seen: map[string]bool{}}
	c := memberlist.DefaultLANConfig()
	c.Name, c.BindAddr, c.BindPort, c.AdvertisePort = *name, *bind, *port, *port
	c.Events, c.Delegate = d, d
	c.LogOutput = io.Discard
	ml, err := memberlist.Create(c)
	if err != nil {
		return err
	}
	d.q = &memberlist.TransmitLimitedQueue{NumNodes: ml.NumMembers, RetransmitMult: c.RetransmitMult}
	out.printf("running gossip=%s:%d", *bind, ml.LocalNode().Port)
	if *join != "" {
		if _, err := ml.Join([]string{*join}); err != nil {
			return err
		}
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if k, ok := strings.CutPrefix(sc.Text(), "put "); ok {
			d.got(k)
			d.q.QueueBroadcast(&plainBroadcast{msg: []byte(k)})
		}
	}
	return ml.Shutdown()
}

type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) printf(format string, a ...any) {
	l.mu.Lock()
	fmt.Fprintf(l.w, format+"\n", a...)
	l.mu.Unlock()
}

type plainDelegate struct {
	out  *lineWriter
	q    *memberlist.TransmitLimitedQueue
	mu   sync.Mutex
	seen map[string]bool
}

func (d *plainDelegate) got(k string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen[k] {
		return false
	}
	d.seen[k] = true
	d.out.printf("got %s", k)
	return true
}

func (d *plainDelegate) NotifyJoin(n *memberlist.Node) { d.out.printf("member alive node=%s", n.Name) }
func (d *plainDelegate) NotifyLeave(n *memberlist.Node) {
	d.out.printf("member failed node=%s", n.Name)
}
func (d *plainDelegate) NotifyUpdate(n *memberlist.Node) {}
func (d *plainDelegate) NodeMeta(int) []byte             { return nil }
func (d *plainDelegate) NotifyMsg(b []byte) {
	k := string(b)
	if d.got(k) { // pass news on, as pier does
		d.q.QueueBroadcast(&plainBroadcast{msg: []byte(k)})
	}
}
func (d *plainDelegate) GetBroadcasts(overhead, limit int) [][]byte {
	if d.q == nil {
		return nil
	}
	return d.q.GetBroadcasts(overhead, limit)
}
func (d *plainDelegate) LocalState(bool) []byte            { return nil }
func (d *plainDelegate) MergeRemoteState(b []byte, j bool) {}

type plainBroadcast struct{ msg []byte }

func (b *plainBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b *plainBroadcast) Message() []byte                       { return b.msg }
func (b *plainBroadcast) Finished()                             {}

// node is one process of a run.
type node struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	gossip  string // host:port
	http    string // pier only
	ready   chan struct{}
	readyAt time.Time // when it said it was running
	// readyCPU is the CPU time its process had used when it said so:
	// what starting one costs, which the machine's load does not inflate
	// as it does the wall time.
	readyCPU time.Duration
	exited   chan struct{}
	mu       sync.Mutex
	alive    map[string]bool
	got      map[string]time.Time
	log      bytes.Buffer
}

var (
	memberLine = regexp.MustCompile(`member (alive|failed|left|forced out).* node=(\S+)`)
	gossipAddr = regexp.MustCompile(`gossip=([0-9.:]+)`)
	httpAddr   = regexp.MustCompile(`msg="pier agent running".* http=([0-9.:]+)`)
	gotLine    = regexp.MustCompile(`^got (\S+)`)
)

// cluster follows every node's member list and tells when all are complete.
type cluster struct {
	nodes   []*node
	changed chan struct{}
}

func (c *cluster) follow(n *node, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		now := time.Now()
		n.mu.Lock()
		if n.log.Len() < 1<<20 {
			n.log.WriteString(line + "\n")
		}
		if m := memberLine.FindStringSubmatch(line); m != nil {
			n.alive[m[2]] = m[1] == "alive"
		} else if m := gotLine.FindStringSubmatch(line); m != nil {
			if _, ok := n.got[m[1]]; !ok {
				n.got[m[1]] = now
			}
		} else if n.gossip == "" && (strings.HasPrefix(line, "running ") || strings.Contains(line, `msg="pier agent running"`)) {
			if m := gossipAddr.FindStringSubmatch(line); m != nil {
				n.gossip = m[1]
				if h := httpAddr.FindStringSubmatch(line); h != nil {
					n.http = h[1]
				}
				n.readyAt = now
				n.readyCPU = processCPU(n.cmd.Process.Pid)
				close(n.ready)
			}
		}
		n.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}

func (n *node) members() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := 1 // itself
	for _, ok := range n.alive {
		if ok {
			k++
		}
	}
	return k
}

// converged waits until every node lists all, or d passes; it returns the
// time taken and how many nodes were still incomplete.
func (c *cluster) converged(start time.Time, d time.Duration) (time.Duration, int) {
	deadline := time.After(d)
	for {
		missing := 0
		for _, n := range c.nodes {
			if n.members() < len(c.nodes) {
				missing++
			}
		}
		if missing == 0 {
			return time.Since(start), 0
		}
		select {
		case <-c.changed:
		case <-deadline:
			return d, missing
		}
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	pierBin := fs.String("pier", "", "the pier binary (empty: plain memberlist only)")
	kind := fs.String("kind", "pier", "pier or plain")
	n := fs.Int("n", 50, "nodes")
	writes := fs.Int("writes", 100, "writes to propagate after the join")
	timeout := fs.Duration("timeout", 120*time.Second, "longest wait for the join and for each write")
	every := fs.Duration("every", 100*time.Millisecond, "pause between writes")
	settle := fs.Duration("settle", 0, "pause between the join's convergence and the first write (0: none, writes start at once)")
	idle := fs.Duration("idle", 30*time.Second, "how long the idle cluster's CPU is measured after the writes (0: not)")
	fs.Parse(args)
	fmt.Printf("%s n=%d load average at start: %s\n", *kind, *n, loadavg())
	self, err := os.Executable()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "pier-gossip-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &cluster{changed: make(chan struct{}, 1)}
	defer func() {
		for _, nd := range c.nodes {
			nd.cmd.Process.Kill()
		}
		for _, nd := range c.nodes {
			select {
			case <-nd.exited:
			case <-time.After(10 * time.Second):
			}
		}
	}()
	start := func(i int, join string) (*node, error) {
		name := fmt.Sprintf("n%03d", i)
		ip := fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
		var cmd *exec.Cmd
		if *kind == "pier" {
			argv := []string{"agent", "-node", name, "-bind", ip, "-client", ip, "-serf-lan-port", "0", "-http-port", "0",
				"-dns-port", "0", "-data-dir", filepath.Join(work, name)}
			if join != "" {
				argv = append(argv, "-join", join)
			}
			cmd = exec.CommandContext(ctx, *pierBin, argv...)
		} else {
			argv := []string{"plain", "-name", name, "-bind", ip}
			if join != "" {
				argv = append(argv, "-join", join)
			}
			cmd = exec.CommandContext(ctx, self, argv...)
		}
		nd := &node{name: name, cmd: cmd, ready: make(chan struct{}), exited: make(chan struct{}), alive: map[string]bool{}, got: map[string]time.Time{}}
		pr, pw := io.Pipe()
		cmd.Stdout, cmd.Stderr = pw, pw
		if nd.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		go func() {
			cmd.Wait()
			pw.Close()
			close(nd.exited)
		}()
		go c.follow(nd, pr)
		return nd, nil
	}
	first, err := start(0, "")
	if err != nil {
		return err
	}
	c.nodes = append(c.nodes, first)
	select {
	case <-first.ready:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("the first node did not start:\n%s", first.log.String())
	}
	t0 := time.Now()
	for i := 1; i < *n; i++ {
		nd, err := start(i, first.gossip)
		if err != nil {
			return err
		}
		c.nodes = append(c.nodes, nd)
	}
	took, missing := c.converged(t0, *timeout)
	// The CPU every process had used when the join converged: with what
	// each had used to start, what the join's gossip cost.
	var joinCPU time.Duration
	for _, nd := range c.nodes {
		joinCPU += processCPU(nd.cmd.Process.Pid)
	}
	if missing > 0 {
		fmt.Printf("%s n=%d join: NOT converged after %v, %d nodes incomplete\n", *kind, *n, *timeout, missing)
		for _, nd := range c.nodes {
			nd.mu.Lock()
			var lacks []string
			for _, o := range c.nodes {
				if o != nd && !nd.alive[o.name] {
					lacks = append(lacks, o.name)
				}
			}
			if len(lacks) > 0 {
				fmt.Printf("  %s lacks %v\n", nd.name, lacks)
				if os.Getenv("BENCH_LOGS") != "" {
					fmt.Print(nd.log.String())
				}
			}
			nd.mu.Unlock()
		}
	} else {
		fmt.Printf("%s n=%d join: every node lists all %d members after %.2f s\n", *kind, *n, *n, took.Seconds())
	}
	var lastUp time.Time
	for _, nd := range c.nodes[1:] {
		nd.mu.Lock()
		if nd.readyAt.After(lastUp) {
			lastUp = nd.readyAt
		}
		nd.mu.Unlock()
	}
	if !lastUp.IsZero() {
		// Starting n processes at once on a small machine takes time of
		// its own, before any gossip: the join's time includes it.
		fmt.Printf("%s n=%d start: the last process was running after %.2f s\n", *kind, *n, lastUp.Sub(t0).Seconds())
		if missing == 0 {
			fmt.Printf("%s n=%d join: converged %.2f s after the last process was running\n", *kind, *n, (took - lastUp.Sub(t0)).Seconds())
		}
	}
	for _, nd := range c.nodes {
		select {
		case <-nd.ready:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("%s did not start", nd.name)
		}
	}
	var cpus []time.Duration
	for _, nd := range c.nodes {
		nd.mu.Lock()
		cpus = append(cpus, nd.readyCPU)
		nd.mu.Unlock()
	}
	var startCPU time.Duration
	for _, c := range cpus {
		startCPU += c
	}
	slices.Sort(cpus)
	if missing == 0 {
		fmt.Printf("%s n=%d join: CPU per process from running to converged: mean %.1f ms\n", *kind, *n, float64((joinCPU-startCPU).Microseconds())/1000/float64(len(cpus)))
	}
	fmt.Printf("%s n=%d start: CPU of a process until it was running: median %.1f ms, max %.1f ms\n",
		*kind, *n, float64(cpus[len(cpus)/2].Microseconds())/1000, float64(cpus[len(cpus)-1].Microseconds())/1000)
	if *kind == "pier" {
		// The garbage collections and the bytes allocated so far, first
		// (each scrape allocates): the start's and the join's heap work.
		fmt.Printf("%s n=%d after the join, per process: garbage collections %.1f, allocated %.1f MB\n", *kind, *n,
			sumMetric(c.nodes, "go_gc_duration_seconds_count")/float64(len(c.nodes)), sumMetric(c.nodes, "go_memstats_alloc_bytes_total")/float64(len(c.nodes))/1e6)
		// What the join cost in gossip beyond memberlist's own: push/pulls
		// (joins, and members joined by the repair) and digest exchanges.
		fmt.Printf("%s n=%d after the join, over all nodes: push/pull states sent %.0f, received %.0f; members joined by the repair %.0f; entries repaired %.0f; digests held back while members joined %.0f\n", *kind, *n,
			sumMetric(c.nodes, `pier_gossip_push_pull_total{direction="sent"}`), sumMetric(c.nodes, `pier_gossip_push_pull_total{direction="received"}`),
			sumMetric(c.nodes, "pier_gossip_repaired_members_total"), sumMetric(c.nodes, "pier_gossip_repaired_entries_total"),
			sumMetric(c.nodes, "pier_gossip_repair_paused_total"))
	}
	time.Sleep(*settle)
	if *writes > 0 {
		if err := measureWrites(ctx, c, *kind, *n, *writes, *every, *timeout); err != nil {
			return err
		}
	}
	if *idle > 0 {
		cpu := idleCPU(c.nodes, *idle)
		fmt.Printf("%s n=%d idle: %.3f CPU seconds per node per minute over %v (%.2f %% of a core); load average %s\n",
			*kind, *n, cpu, *idle, cpu/60*100, loadavg())
	}
	return nil
}

// measureWrites makes writes, one every every on a node taken in turn, and
// prints how long each took to reach every node.
func measureWrites(ctx context.Context, c *cluster, kind string, n, writes int, every, timeout time.Duration) error {
	if kind == "pier" {
		for _, nd := range c.nodes {
			go watchServices(ctx, c, nd)
		}
	}
	sent := make([]time.Time, writes)
	for i := range writes {
		nd := c.nodes[(i*7+3)%len(c.nodes)]
		key := fmt.Sprintf("bench%03d", i)
		sent[i] = time.Now()
		if kind == "pier" {
			body := fmt.Sprintf(`{"Name":%q,"Port":%d}`, key, 1000+i)
			req, _ := http.NewRequest(http.MethodPut, "http://"+nd.http+"/v1/agent/service/register", strings.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
		} else {
			fmt.Fprintf(nd.stdin, "put %s\n", key)
		}
		time.Sleep(every)
	}
	// Wait until every node has every write, or the timeout.
	deadline := time.Now().Add(timeout)
	var lat []time.Duration
	var slow []string
	late := 0
	for {
		lat, late, slow = lat[:0], 0, slow[:0]
		for i := range writes {
			key := fmt.Sprintf("bench%03d", i)
			var last time.Time
			var lastNode string
			var second time.Time // when the last node but one had it
			for _, nd := range c.nodes {
				nd.mu.Lock()
				at, ok := nd.got[key]
				nd.mu.Unlock()
				if !ok {
					last = time.Time{}
					break
				}
				if at.After(last) {
					second, last, lastNode = last, at, nd.name
				} else if at.After(second) {
					second = at
				}
			}
			if last.IsZero() {
				late++
				continue
			}
			lat = append(lat, last.Sub(sent[i]))
			if d := last.Sub(sent[i]); d > 1500*time.Millisecond {
				slow = append(slow, fmt.Sprintf("%s %.2f s (last %s; the one before it %.2f s)", key, d.Seconds(), lastNode, second.Sub(sent[i]).Seconds()))
			}
		}
		if late == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-c.changed:
		case <-time.After(500 * time.Millisecond):
		}
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))].Seconds()
	}
	fmt.Printf("%s n=%d writes: %d, reached every node: p50 %.2f s, p99 %.2f s, max %.2f s; %d not everywhere after %v\n",
		kind, n, writes, q(0.5), q(0.99), q(1), late, timeout)
	for _, s := range slow {
		fmt.Printf("  slow: %s\n", s)
	}
	if kind == "pier" {
		fmt.Printf("%s n=%d repaired entries (pier_gossip_repaired_entries_total, all nodes): %.0f\n", kind, n, sumMetric(c.nodes, "pier_gossip_repaired_entries_total"))
	}
	return nil
}

// idleCPU measures the user and system CPU time of every node's process
// over d (from /proc/PID/stat) and returns the mean per node per minute.
func idleCPU(nodes []*node, d time.Duration) float64 {
	ticks := func() (sum int64) {
		for _, nd := range nodes {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", nd.cmd.Process.Pid))
			if err != nil {
				continue
			}
			// The command name (field 2) may hold spaces: count from its end.
			f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
			if len(f) > 12 {
				u, _ := strconv.ParseInt(f[11], 10, 64)
				s, _ := strconv.ParseInt(f[12], 10, 64)
				sum += u + s
			}
		}
		return sum
	}
	before := ticks()
	time.Sleep(d)
	used := float64(ticks()-before) / 100 // USER_HZ is 100 on Linux
	return used / float64(len(nodes)) * float64(time.Minute) / float64(d)
}

// sumMetric adds a counter's value over every pier node's /metrics.
func sumMetric(nodes []*node, name string) float64 {
	var sum float64
	for _, nd := range nodes {
		resp, err := http.Get("http://" + nd.http + "/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				sum += f
			}
		}
		resp.Body.Close()
	}
	return sum
}

// processCPU sums the CPU time of every thread of a process
// (/proc/PID/task/*/schedstat, nanoseconds, finer than /proc/PID/stat's
// 10 ms ticks).
func processCPU(pid int) time.Duration {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			sum += time.Duration(ns)
		}
	}
	return sum
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// watchServices follows one pier agent's /v1/catalog/services with a
// blocking query and records when each bench service first shows up.
func watchServices(ctx context.Context, c *cluster, nd *node) {
	index := "0"
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+nd.http+"/v1/catalog/services?wait=30s&index="+index, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var svcs map[string][]string
		json.NewDecoder(resp.Body).Decode(&svcs)
		resp.Body.Close()
		now := time.Now()
		index = resp.Header.Get("X-Consul-Index")
		if _, err := strconv.ParseUint(index, 10, 64); err != nil {
			index = "0"
		}
		nd.mu.Lock()
		for s := range svcs {
			if _, ok := nd.got[s]; !ok && strings.HasPrefix(s, "bench") {
				nd.got[s] = now
			}
		}
		nd.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
}
