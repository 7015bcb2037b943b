package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

// gcPercent reads the GC percent in force without changing it.
func gcPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func TestRelaxGCAtStartGoesBack(t *testing.T) {
	t.Setenv("GOGC", "")
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop := relaxGCAtStart(context.Background())
	if got := gcPercent(); got != startGCPercent {
		t.Fatalf("GC percent while starting: %d, want %d", got, startGCPercent)
	}
	stop()
	if got := gcPercent(); got != 100 {
		t.Fatalf("GC percent after: %d, want 100 again", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	stop = relaxGCAtStart(ctx)
	cancel() // the agent ended
	stop()
	if got := gcPercent(); got != 100 {
		t.Fatalf("GC percent after the agent ended: %d, want 100 again", got)
	}
}

func TestRelaxGCAtStartEndsOnALargeHeap(t *testing.T) {
	t.Setenv("GOGC", "")
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	stop := relaxGCAtStart(context.Background())
	defer stop()
	var big [][]byte
	for range 40 {
		big = append(big, make([]byte, 1<<20))
	}
	// Well within startGCFor: the heap, not the time, ends it.
	deadline := time.Now().Add(10 * time.Second)
	for gcPercent() != 100 {
		if time.Now().After(deadline) {
			t.Fatalf("GC percent still %d with a 40 MB heap", gcPercent())
		}
		time.Sleep(50 * time.Millisecond)
	}
	runtime.KeepAlive(big)
}

func TestRelaxGCAtStartLeavesGOGC(t *testing.T) {
	t.Setenv("GOGC", "50")
	defer debug.SetGCPercent(debug.SetGCPercent(50))
	stop := relaxGCAtStart(context.Background())
	defer stop()
	if got := gcPercent(); got != 50 {
		t.Fatalf("GC percent with GOGC=50 in the environment: %d, want 50", got)
	}
}
