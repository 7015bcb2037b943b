package eventually

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestWithinReturnsOnceTheConditionHolds(t *testing.T) {
	var calls atomic.Int32
	err := Within(10*time.Second, func() error {
		if calls.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls.Load() != 3 {
		t.Fatalf("err %v after %d calls, want nil after 3", err, calls.Load())
	}
}

func TestWithinGivesTheLastErrorAfterTheBound(t *testing.T) {
	n := 0
	start := time.Now()
	err := Within(20*time.Millisecond, func() error {
		n++
		return errors.New("seen " + string(rune('0'+min(n, 9))))
	})
	if err == nil || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	if want := "seen " + string(rune('0'+min(n, 9))); err.Error() != want {
		t.Fatalf("err %q, want the last one %q", err, want)
	}
}
