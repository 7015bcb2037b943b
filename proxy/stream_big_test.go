//go:build !race

// The race detector slows copying a gigabyte ten-fold and multiplies the
// memory each goroutine uses, so this test runs only without it (go test
// ./proxy/); TestStreaming covers the same paths with 100 MiB under -race.

package proxy

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStreamGiB sends 1 GiB up and 1 GiB down through the proxy and checks
// that the resident memory of the whole process (proxy, backend and
// client) grew by only a few tens of MiB while it did: a buffered body
// would add the gigabyte.
func TestStreamGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 2 GiB")
	}
	const size = 1 << 30
	if rssKiB() == 0 {
		t.Skip("no VmRSS in /proc/self/status: cannot read the resident memory")
	}
	b := newBackend(t, "api")
	e := newEnv(t, func(c *Config) { c.Routes = []Route{{Path: "/", Service: "api"}} })
	e.register("api-1", "api", b.addr, 1)
	e.synced()

	base := rssKiB()
	var peak atomic.Int64
	peak.Store(base)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		// Sampled, not read from VmHWM: the peak of earlier tests in this
		// process would hide this one's.
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if r := rssKiB(); r > peak.Load() {
					peak.Store(r)
				}
			}
		}
	}()
	began := time.Now()

	req, _ := http.NewRequest("POST", "http://"+e.addr+"/upload", io.LimitReader(zeros{}, size))
	req.ContentLength = size
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || decode(t, string(body)).Body != size {
		t.Fatalf("upload: %d %.200s", resp.StatusCode, body)
	}
	up := time.Since(began)

	resp, err = e.http.Get("http://" + e.addr + "/download?size=" + strconv.Itoa(size))
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != size || resp.StatusCode != 200 {
		t.Fatalf("download: %d, %d bytes, %v", resp.StatusCode, n, err)
	}
	close(stop)
	wg.Wait()

	grew := (peak.Load() - base) >> 10
	t.Logf("1 GiB up in %v, 1 GiB down in %v; resident memory %d MiB before, at most %d MiB more during",
		up.Round(time.Millisecond), (time.Since(began) - up).Round(time.Millisecond), base>>10, grew)
	if grew > 64 {
		t.Errorf("resident memory grew by %d MiB moving 2 GiB: a body was buffered", grew)
	}
}

// rssKiB reads the process's resident memory from /proc, 0 if it cannot.
func rssKiB() int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(st, []byte("VmRSS:"))
	if f := bytes.Fields(rest); ok && len(f) > 0 {
		kb, _ := strconv.ParseInt(string(f[0]), 10, 64)
		return kb
	}
	return 0
}
