package main

import (
	"context"
	"runtime/debug"
	"testing"
)

// gcPercent reads the GC percent in force without changing it.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
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

func TestRelaxGCAtStartLeavesGOGC(t *testing.T) {
	t.Setenv("GOGC", "50")
	defer debug.SetGCPercent(debug.SetGCPercent(50))
	stop := relaxGCAtStart(context.Background())
	defer stop()
	if got := gcPercent(); got != 50 {
		t.Fatalf("GC percent with GOGC=50 in the environment: %d, want 50", got)
	}
}
