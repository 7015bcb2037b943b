// Command tcpload is the TCP route benchmark's instance and load
// generator (deploy/bench/tcp.sh).
//
//	tcpload serve -addr 127.0.0.1:19001              an echo server
//	tcpload stream -addr A -conns 16 -d 10s          echo throughput: each connection writes 64 KiB and reads it back, in a loop
//	tcpload connect -addr A -conns 32 -d 10s         connections per second: connect, 16 bytes there and back, close
//
// Both load modes print one line of JSON: ops, seconds, MB/s (bytes echoed
// back per second) or conns/s, p50 and p99 in microseconds, and errors.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: tcpload serve|stream|connect -addr host:port [-conns n] [-d duration]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:19001", "listen (serve) or connect to (stream, connect)")
	conns := fs.Int("conns", 16, "concurrent connections")
	dur := fs.Duration("d", 10*time.Second, "how long to run")
	fs.BoolVar(&linger0, "linger0", false, "close with SO_LINGER 0 (a reset, so no TIME_WAIT socket is left): connect mode's client, and serve's instance once the client is done")
	fs.Parse(os.Args[2:])
	switch os.Args[1] {
	case "serve":
		serve(*addr)
	case "stream", "connect":
		res := run(os.Args[1], *addr, *conns, *dur)
		json.NewEncoder(os.Stdout).Encode(res)
	default:
		fmt.Fprintln(os.Stderr, "tcpload: unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func serve(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpload:", err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			reset(c)
		}()
	}
}

type result struct {
	Mode    string  `json:"mode"`
	Ops     int64   `json:"ops"`
	Seconds float64 `json:"seconds"`
	MBps    float64 `json:"mb_per_s,omitempty"`
	ConnsPS float64 `json:"conns_per_s,omitempty"`
	P50us   int64   `json:"p50_us"`
	P99us   int64   `json:"p99_us"`
	Errors  int64   `json:"errors"`
}

func run(mode, addr string, conns int, dur time.Duration) result {
	var ops, bytes, errs atomic.Int64
	lat := make([][]time.Duration, conns)
	end := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if mode == "stream" {
				n, l, err := stream(addr, end)
				bytes.Add(n)
				ops.Add(int64(len(l)))
				lat[i] = l
				if err != nil {
					errs.Add(1)
				}
				return
			}
			for time.Now().Before(end) {
				t0 := time.Now()
				if err := connectOnce(addr); err != nil {
					errs.Add(1)
					continue
				}
				lat[i] = append(lat[i], time.Since(t0))
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	all := slices.Concat(lat...)
	slices.Sort(all)
	q := func(p float64) int64 {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()
	}
	r := result{Mode: mode, Ops: ops.Load(), Seconds: secs, P50us: q(.50), P99us: q(.99), Errors: errs.Load()}
	if mode == "stream" {
		r.MBps = float64(bytes.Load()) / secs / 1e6
	} else {
		r.ConnsPS = float64(r.Ops) / secs
	}
	return r
}

// stream writes 64 KiB chunks and reads each back until end, returning the
// bytes echoed and each chunk's round trip.
func stream(addr string, end time.Time) (int64, []time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	in := make([]byte, len(buf))
	var n int64
	var lat []time.Duration
	for time.Now().Before(end) {
		t0 := time.Now()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		errc := make(chan error, 1)
		go func() { _, err := c.Write(buf); errc <- err }()
		if _, err := io.ReadFull(c, in); err != nil {
			return n, lat, err
		}
		if err := <-errc; err != nil {
			return n, lat, err
		}
		n += int64(len(in))
		lat = append(lat, time.Since(t0))
	}
	return n, lat, nil
}

// linger0 is the -linger0 flag.
var linger0 bool

// reset makes c's close a reset when -linger0 is set: a connection-rate
// run leaves tens of thousands of TIME_WAIT sockets otherwise, on both
// sides of a proxy, which use up the machine's ephemeral ports.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok && linger0 {
		tc.SetLinger(0)
	}
}

func connectOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	defer reset(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("0123456789abcdef")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return errors.New("echo mismatch")
	}
	return nil
}
