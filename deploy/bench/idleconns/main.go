// Command idleconns opens keep-alive connections to an HTTP server, sends
// one request on each and reads its answer, then holds them all idle for a
// while: what deploy/bench/efficiency.sh measures a proxy's memory per idle
// connection with.
//
//	idleconns -addr 127.0.0.1:18083 -n 5000 -path /nothing -hold 8s
//
// It prints "ready N" on stdout once every connection has had its answer
// (N of them still open), holds them for -hold, and exits. Any status
// counts as an answer (the benchmark asks for a path the proxy answers
// itself, 404); a connection the server closed is an error.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18083", "server to connect to")
	n := flag.Int("n", 5000, "connections")
	path := flag.String("path", "/nothing", "path of the one request on each")
	hold := flag.Duration("hold", 8*time.Second, "how long to hold them idle once all are answered")
	par := flag.Int("parallel", 64, "connections being opened at once")
	timeout := flag.Duration("timeout", 30*time.Second, "bound on opening all of them")
	flag.Parse()

	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: bench\r\nUser-Agent: idleconns\r\n\r\n")
	conns := make([]net.Conn, *n)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(*timeout)
	var wg sync.WaitGroup
	for range *par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				c, err := open(*addr, req, deadline)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		fmt.Fprintf(os.Stderr, "idleconns: %d of %d connections failed; first: %v\n", f, *n, firstErr.Load())
	}
	fmt.Printf("ready %d\n", int64(*n)-failed.Load())
	time.Sleep(*hold)
	open := 0
	one := make([]byte, 1)
	for _, c := range conns {
		if c == nil {
			continue
		}
		// Still open (not closed by the server meanwhile)?
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(one); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				open++
			}
		}
		c.Close()
	}
	fmt.Printf("held %d\n", open)
	if failed.Load() > 0 || open < *n {
		os.Exit(1)
	}
}

// open connects, sends req and reads one whole answer.
func open(addr string, req []byte, deadline time.Time) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return nil, err
	}
	c.SetDeadline(deadline)
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 1024)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.Close || br.Buffered() > 0 {
		c.Close()
		return nil, fmt.Errorf("answer not kept alive (%v, close %v)", err, resp.Close)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
