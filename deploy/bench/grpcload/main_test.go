package main

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentile(t *testing.T) {
	v := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if p := percentile(v, 50); p != 5 {
		t.Errorf("p50 = %d", p)
	}
	if p := percentile(v, 99); p != 10 {
		t.Errorf("p99 = %d", p)
	}
	if p := percentile(nil, 99); p != 0 {
		t.Errorf("p99 of none = %d", p)
	}
}
