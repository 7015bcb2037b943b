package main

import (
	"context"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// An agent's first seconds allocate in a burst while its live heap stays
// small: building its parts, then the join's states, member events and
// repair exchanges, about 10 MB per agent in a join of 100 against a live
// heap of 2 to 3 MB. Go's default goal (GOGC=100, at least 4 MB) makes
// that two or three collections per agent, which on a machine where a
// hundred agents start at once cost a sixth to a third of an agent's CPU
// from running to joined (gossip.sh at 100 nodes: a median of 34 against
// 28 ms over five rounds; see deploy/bench/README.md). So an agent starts
// with a larger goal and goes back to GOGC's own once the join has had its
// time or the heap has grown past what a small cluster holds. A GOGC set
// in the environment is left as it is.
const (
	startGCPercent = 400
	startGCFor     = 30 * time.Second
	startGCHeap    = 32 << 20 // heap objects at which the default comes back at once
)

// relaxGCAtStart raises the GC goal until startGCFor has passed, the heap
// reached startGCHeap or ctx ended; the returned func ends it early and
// waits for its goroutine.
func relaxGCAtStart(ctx context.Context) (stop func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	prev := debug.SetGCPercent(startGCPercent)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer debug.SetGCPercent(prev)
		end := time.NewTimer(startGCFor)
		defer end.Stop()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		heap := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		for {
			select {
			case <-ctx.Done():
				return
			case <-end.C:
				return
			case <-tick.C:
				// Live and not yet swept: past the goal of a small heap
				// means a large cluster, where 5 times its live heap
				// would be much memory for little CPU.
				if metrics.Read(heap); heap[0].Value.Uint64() >= startGCHeap {
					return
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
