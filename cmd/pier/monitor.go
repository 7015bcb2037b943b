package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
)

// runMonitor prints the agent's log as it is written, as `consul monitor`:
// until interrupted (exit 0) or until the agent ends the stream (exit 1).
func runMonitor(args []string, stdout, stderr io.Writer) error {
	var level string
	var asJSON bool
	_, c, _, err := apiCommand("monitor", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&level, "log-level", "info", "lowest level shown: trace, debug, info, warn or error")
		fs.BoolVar(&asJSON, "log-json", false, "print each line as a JSON object")
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	q := url.Values{"loglevel": {level}}
	if asJSON {
		q.Set("logjson", "")
	}
	// No client timeout: the answer lasts as long as the user watches.
	resp, err := c.open(ctx, &http.Client{Transport: c.http.Transport}, "GET", "/v1/agent/monitor?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fmt.Fprintln(stdout, sc.Text())
	}
	if ctx.Err() != nil {
		return nil // interrupted by the user
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("the agent ended the monitor: %v", err)
	}
	return errors.New("the agent ended the monitor: it has exited or crashed")
}
