package main

import (
	"testing"
	"time"
)

// TestHistQuantiles checks the histogram against samples whose quantiles
// are known: within its 1.6% bucket width, and exact below 128 ns.
func TestHistQuantiles(t *testing.T) {
	h, other := &hist{}, &hist{}
	for i := 1; i <= 100_000; i++ {
		if i%2 == 0 {
			h.record(time.Duration(i) * time.Microsecond)
		} else {
			other.record(time.Duration(i) * time.Microsecond)
		}
	}
	h.merge(other)
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {0.999, 99900 * time.Microsecond}, {1, 100 * time.Millisecond}} {
		got := h.quantile(c.q)
		if d := float64(got-c.want) / float64(c.want); d > 0.016 || d < -0.016 {
			t.Errorf("quantile(%v) = %v, want %v within 1.6%%", c.q, got, c.want)
		}
	}
	if got := h.mean(); got < 50*time.Millisecond || got > 50*time.Millisecond+time.Microsecond {
		t.Errorf("mean = %v, want 50.0005ms", got)
	}
	small := &hist{}
	for i := range 100 {
		small.record(time.Duration(i))
	}
	if got := small.quantile(0.5); got != 50 && got != 49 {
		t.Errorf("quantile(0.5) of 0..99 ns = %v", got)
	}
	for i := range len(h.counts) {
		if lowest(bucket(lowest(i))) != lowest(i) || (i > 0 && lowest(i) <= lowest(i-1)) {
			t.Fatalf("bucket %d: lowest %d is not the start of its own bucket", i, lowest(i))
		}
	}
}
