package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry/api"
)

// TestWaitChallenge: the DNS-01 solver's wait returns only once the
// registry the agent's DNS answers from holds the record's value (a server
// just started copies the Raft state into it a moment after the write is
// committed; the CA asking in that moment failed an order in CI), and
// gives up with the context.
func TestWaitChallenge(t *testing.T) {
	var polls atomic.Int32
	st := newKVStorage(http.NotFoundHandler(), "", slog.New(slog.DiscardHandler))
	st.local = func(key string) ([]byte, bool) {
		if key != api.ACMEKVPrefix+"dns/_acme-challenge.x.test/ab" {
			t.Errorf("asked for %q", key)
		}
		switch n := polls.Add(1); {
		case n < 3:
			return nil, false
		case n < 5:
			return []byte("an older value"), true
		}
		return []byte("v"), true
	}
	if err := st.WaitChallenge(context.Background(), "dns/_acme-challenge.x.test/ab", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if n := polls.Load(); n != 5 {
		t.Errorf("returned after %d looks, want 5 (absent twice, another value twice, then the value)", n)
	}

	st.local = func(string) ([]byte, bool) { return nil, false }
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := st.WaitChallenge(ctx, "dns/_acme-challenge.x.test/ab", []byte("v")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a record never answered: %v, want the context's deadline", err)
	}
}
