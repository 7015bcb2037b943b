package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/deploy/eventually"
)

// BenchmarkACLReplication measures how long a token made in dc1 (the
// primary) takes to work in dc2 (a secondary that replicates tokens): the
// time from the create's answer in dc1 until a read with the token on
// dc2's client answers 200 (asked every millisecond), and the CPU that
// dc1's and dc2's servers spend per token (from /proc; the polling's cost
// falls on dc2's client, which is not counted). Tokens are made one at a
// time, 150 ms apart.
// Run: go test -run XXX -bench ACLReplication -benchtime 50x ./cmd/pier/
func BenchmarkACLReplication(b *testing.B) {
	needBinary(b)
	dc1, dc2 := replicatedDCs(b)
	r1 := tokenClient(b, dc1.clients[0].addr, "root-tok")
	var pol *consul.ACLPolicy
	eventually.NoError(b, 30*time.Second, "dc1 takes a policy", func() error {
		var err error
		pol, _, err = r1.ACL().PolicyCreate(&consul.ACLPolicy{Name: "nodes", Rules: `node_prefix "" { policy = "read" }`}, nil)
		return err
	})
	// Timed from a running replication: dc2 has the policy.
	r2 := tokenClient(b, dc2.clients[0].addr, "root-tok")
	eventually.True(b, 30*time.Second, "dc2 replicates the policy", func() bool {
		p, _, err := r2.ACL().PolicyRead(pol.ID, nil)
		return err == nil && p != nil
	})
	servers := []int{dc1.server.cmd.Process.Pid, dc2.server.cmd.Process.Pid}
	var took []time.Duration
	cpu0 := cpuTicks(b, servers...)
	b.ResetTimer()
	for range b.N {
		// One change at a time: a secondary runs at most 10 rounds a
		// second after a burst (registry/acl's rate limit), which back to
		// back creates would measure instead.
		b.StopTimer()
		time.Sleep(150 * time.Millisecond)
		b.StartTimer()
		tok, _, err := r1.ACL().TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		made := time.Now()
		for {
			code, _ := apiDo(b, "GET", "http://"+dc2.clients[0].addr+"/v1/catalog/nodes", tok.SecretID, "")
			if code == 200 {
				break
			}
			if time.Since(made) > 10*time.Second {
				b.Fatalf("the token does not work in dc2 after %v", time.Since(made))
			}
			time.Sleep(time.Millisecond)
		}
		took = append(took, time.Since(made))
	}
	b.StopTimer()
	ticks := cpuTicks(b, servers...) - cpu0
	slices.Sort(took)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(took[len(took)/2]), "ms-median")
	b.ReportMetric(ms(took[len(took)*9/10]), "ms-p90")
	b.ReportMetric(ms(took[len(took)-1]), "ms-max")
	b.ReportMetric(float64(ticks)*10/float64(b.N), "servers-cpu-ms/op") // 100 ticks a second
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.Logf("load average: %s", bytes.TrimSpace(load))
	}
}

// cpuTicks sums the user and system clock ticks of pids (/proc/pid/stat).
func cpuTicks(b testing.TB, pids ...int) int64 {
	var sum int64
	for _, pid := range pids {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatal(err)
		}
		// The fields after the command, which is in parentheses.
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+2:]))
		for _, i := range []int{11, 12} { // utime, stime: fields 14 and 15
			n, _ := strconv.ParseInt(f[i], 10, 64)
			sum += n
		}
	}
	return sum
}
