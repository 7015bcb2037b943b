package main

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkAgentRSS measures the resident memory of an idle agent (the built
// binary) holding 1,000 registered services.
// Run: go test -run XXX -bench AgentRSS -benchtime 1x ./cmd/pier/
func BenchmarkAgentRSS(b *testing.B) {
	for range b.N {
		p := startAgentIn(b, nil, "-dev")
		client := &http.Client{Timeout: 10 * time.Second}
		for i := range 1000 {
			body := fmt.Sprintf(`{"ID":"svc-%d","Name":"svc-%d","Port":%d,"Tags":["v1","primary"],"Meta":{"version":"1.2.3"}}`, i, i%100, 10000+i)
			req, _ := http.NewRequest("PUT", "http://"+p.addr+"/v1/agent/service/register", strings.NewReader(body))
			resp, err := client.Do(req)
			if err != nil || resp.StatusCode != 200 {
				b.Fatalf("register %d: %v %v", i, err, resp)
			}
			resp.Body.Close()
		}
		// Measuring memory over wall time, not waiting for an event: right
		// after the burst, and after the runtime's two-minute forced GC has
		// let the scavenger return the burst's garbage.
		time.Sleep(3 * time.Second)
		b.ReportMetric(float64(vmRSS(b, p.cmd.Process.Pid))/1024, "MB-rss-3s-after")
		time.Sleep(2*time.Minute + 5*time.Second)
		b.ReportMetric(float64(vmRSS(b, p.cmd.Process.Pid))/1024, "MB-rss-idle")
	}
}

func vmRSS(b *testing.B, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range bytes.Split(st, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := strings.Fields(string(rest))
			kb, _ := strconv.Atoi(f[0])
			return kb
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
