package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
)

// TestUnsent: only an error that left the request short of the server (a
// failed dial, a failed write of the request) lets a forwarded write be
// tried again; one that lost the answer may have been applied.
func TestUnsent(t *testing.T) {
	op := func(name string, err error) error { return &net.OpError{Op: name, Net: "tcp", Err: err} }
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"dial refused", op("dial", syscall.ECONNREFUSED), true},
		{"write on a closed connection", fmt.Errorf("write error: %w", op("write", syscall.EPIPE)), true},
		{"body copy", op("readfrom", op("write", syscall.EPIPE)), true},
		{"answer lost", op("read", syscall.ECONNRESET), false},
		{"answer cut short", io.ErrUnexpectedEOF, false},
		{"client gone", context.Canceled, false},
		{"other", errors.New("net/http: HTTP/1.x transport connection broken"), false},
	} {
		if got := unsent(c.err); got != c.want {
			t.Errorf("%s (%v): unsent = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}
