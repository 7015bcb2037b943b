package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/eventually"
)

// TestACMEStorageOnRaft drives the front door's certmagic storage against
// a server agent and a client agent (over their HTTP APIs): what one
// stores the other reads, lists, stats and deletes; a lock taken through
// one blocks the other until it is released.
func TestACMEStorageOnRaft(t *testing.T) {
	needBinary(t)
	dir := t.TempDir()
	a := startAgent(t, append([]string{"-node", "st-a", "-data-dir", filepath.Join(dir, "a"), "-bind", "127.0.0.1"}, soloServer...)...)
	b := startAgent(t, "-node", "st-b", "-data-dir", filepath.Join(dir, "b"), "-bind", "127.0.0.1", "-join", a.gossip)
	storage := func(p *proc) *kvStorage {
		u, _ := url.Parse("http://" + p.addr)
		return newKVStorage(httputil.NewSingleHostReverseProxy(u), "", slog.New(slog.DiscardHandler))
	}
	sa, sb := storage(a), storage(b)
	ctx := context.Background()
	eventually.NoError(t, 20*time.Second, "the client reaches the servers' KV", func() error {
		return sb.Store(ctx, "certificates/ca/x.test/x.test.crt", []byte("cert"))
	})
	if err := sa.Store(ctx, "certificates/ca/x.test/x.test.key", []byte("key")); err != nil {
		t.Fatal(err)
	}
	if v, err := sa.Load(ctx, "certificates/ca/x.test/x.test.crt"); err != nil || string(v) != "cert" {
		t.Errorf("load through the server: %q %v", v, err)
	}
	if _, err := sb.Load(ctx, "certificates/ca/none"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("load of a missing key: %v, want fs.ErrNotExist", err)
	}
	if ks, err := sb.List(ctx, "certificates", false); err != nil || !slices.Equal(ks, []string{"certificates/ca"}) {
		t.Errorf("list: %q %v", ks, err)
	}
	if ks, err := sb.List(ctx, "certificates", true); err != nil || len(ks) != 2 {
		t.Errorf("list recursive: %q %v", ks, err)
	}
	if !sb.Exists(ctx, "certificates/ca") || !sb.Exists(ctx, "certificates/ca/x.test/x.test.key") || sb.Exists(ctx, "certificates/c") {
		t.Error("exists: a directory, a key, and not a prefix of a name")
	}
	ki, err := sb.Stat(ctx, "certificates/ca/x.test/x.test.key")
	if err != nil || !ki.IsTerminal || ki.Size != 3 || time.Since(ki.Modified) > time.Minute {
		t.Errorf("stat: %+v %v", ki, err)
	}
	if err := sb.Delete(ctx, "certificates/ca/x.test"); err != nil {
		t.Fatal(err)
	}
	if sa.Exists(ctx, "certificates/ca/x.test/x.test.crt") {
		t.Error("a deleted directory's key still exists")
	}

	if err := sa.Lock(ctx, "issue_cert_x.test"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = sb.Lock(short, "issue_cert_x.test")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second front door took a held lock: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- sb.Lock(ctx, "issue_cert_x.test") }()
	time.Sleep(200 * time.Millisecond) // let it block on the held lock
	if err := sa.Unlock(ctx, "issue_cert_x.test"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting front door did not get the released lock")
	}
	if err := sb.Unlock(ctx, "issue_cert_x.test"); err != nil {
		t.Fatal(err)
	}
}
