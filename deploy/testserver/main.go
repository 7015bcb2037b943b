// Command testserver is a small HTTP backend for pier's benchmarks and
// manual tests: it answers every request with its name and the path it
// got, or with ?size=N bytes, and can take ?delay=D before answering.
//
//	testserver -addr 127.0.0.1:18081 -name b1
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18081", "address to listen on")
	name := flag.String("name", "backend", "name to answer with")
	flag.Parse()
	hello := []byte("hello from " + *name + "\n")
	zeros := make([]byte, 64<<10)
	srv := &fasthttp.Server{
		Name:         "testserver",
		ReadTimeout:  time.Minute,
		IdleTimeout:  time.Minute,
		WriteTimeout: time.Minute,
		Handler: func(ctx *fasthttp.RequestCtx) {
			args := ctx.QueryArgs()
			if d, err := time.ParseDuration(string(args.Peek("delay"))); err == nil && d > 0 && d < time.Minute {
				time.Sleep(d)
			}
			if n, err := strconv.Atoi(string(args.Peek("size"))); err == nil && n > 0 {
				ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
					for n > 0 {
						k := min(n, len(zeros))
						if _, err := w.Write(zeros[:k]); err != nil {
							return
						}
						n -= k
					}
				})
				return
			}
			ctx.SetContentType("text/plain")
			ctx.Write(hello)
		},
	}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		srv.Shutdown()
	}()
	fmt.Fprintf(os.Stderr, "testserver %s listening on %s\n", *name, *addr)
	if err := srv.ListenAndServe(*addr); err != nil {
		log.Fatal(err)
	}
}
