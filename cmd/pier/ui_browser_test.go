package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/pier-dev/pier/deploy/eventually"
)

// browser is one headless Chromium tab for a UI test, collecting the
// page's console errors and exceptions, which the test fails on at its end.
type browser struct {
	t    *testing.T
	ctx  context.Context
	mu   sync.Mutex
	errs []string
}

// newBrowser starts Chromium with a window of w×h and loads url.
func newBrowser(t *testing.T, url string, w, h int, extra ...chromedp.ExecAllocatorOption) *browser {
	t.Helper()
	exe := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // the CI runs as root
		chromedp.Flag("disable-gpu", true),
		chromedp.WindowSize(w, h),
	)
	opts = append(opts, extra...)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelA)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	ctx, cancelT := context.WithTimeout(ctx, 240*time.Second)
	t.Cleanup(cancelT)
	b := &browser{t: t, ctx: ctx}
	if err := chromedp.Listen(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			b.errs = append(b.errs, "exception: "+e.ExceptionDetails.Text)
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning {
				var args []string
				for _, a := range e.Args {
					args = append(args, string(a.Value))
				}
				b.errs = append(b.errs, strings.Join(args, " "))
			}
		}
	}); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	return b
}

// do runs steps and fails the test if one fails.
func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// eval runs a JavaScript statement for its effects.
func (b *browser) eval(js string) {
	b.t.Helper()
	b.do(js, chromedp.Evaluate[chromedp.Void](js))
}

// dark asks the page for the browser's dark mode (prefers-color-scheme).
func (b *browser) dark(on bool) {
	b.t.Helper()
	v := "light"
	if on {
		v = "dark"
	}
	b.do("dark mode", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: v}}})
		return err
	}))
}

// waitFor polls a JavaScript expression until it is true, for at most d.
func (b *browser) waitFor(d time.Duration, what, expr string) {
	b.t.Helper()
	eventually.NoError(b.t, d, "the page shows "+what, func() error {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return nil
		}
		if b.ctx.Err() != nil {
			b.t.Fatalf("the page never showed %s: %v", what, b.ctx.Err())
		}
		text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body.innerText`))
		return fmt.Errorf("err %v; it shows:\n%s", err, text)
	})
}

// number evaluates a JavaScript expression that answers a number.
func (b *browser) number(expr string) float64 {
	b.t.Helper()
	n, err := chromedp.Run(b.ctx, chromedp.Evaluate[float64](expr))
	if err != nil {
		b.t.Fatalf("%s: %v", expr, err)
	}
	return n
}

// shot saves a screenshot of the whole page as a test artefact (go test
// -artifacts keeps them; the path is logged) and returns its path.
func (b *browser) shot(name string) string {
	b.t.Helper()
	return b.save(name, chromedp.FullScreenshot(100))
}

// shotView is shot of the viewport only, for a page too long to picture.
func (b *browser) shotView(name string) string {
	b.t.Helper()
	return b.save(name, chromedp.CaptureScreenshot())
}

func (b *browser) save(name string, capture chromedp.Action[[]byte]) string {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, capture)
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	out := filepath.Join(b.t.ArtifactDir(), name)
	if err := os.WriteFile(out, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", out)
	return out
}

// noConsoleErrors fails the test if the page logged an error or threw.
func (b *browser) noConsoleErrors() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errs) > 0 {
		b.t.Errorf("console errors on the page: %q", b.errs)
	}
}

// js quotes s as a JavaScript string.
func js(s string) string { return fmt.Sprintf("%q", s) }

// serveBackend serves h on a loopback port for the test's length and
// answers the port.
func serveBackend(t *testing.T, h http.Handler) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}
