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
		time.Sleep(3 * time.Second) // idle: let the runtime return what the burst used
		rss := vmRSS(b, p.cmd.Process.Pid)
		b.ReportMetric(float64(rss)/1024, "MB-rss-idle-1000-services")
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
