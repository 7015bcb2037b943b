package proxy

import (
	"math"
	"testing"
)

func TestQuantileInterpolatesInsideTheBucket(t *testing.T) {
	inf := math.Inf(1)
	bounds := []float64{.01, .1, 1, inf}
	cases := []struct {
		q       float64
		buckets []float64
		want    float64
	}{
		{0.5, []float64{10, 0, 0, 0}, .005},      // half of the first bucket
		{0.5, []float64{0, 10, 0, 0}, .055},      // half-way from .01 to .1
		{0.99, []float64{50, 49, 1, 0}, .1},      // the 99th of 100 is the last in the second bucket
		{0.99, []float64{0, 0, 0, 4}, 1},         // beyond the highest bound: that bound
		{0.5, []float64{0, 0, 0, 0}, math.NaN()}, // nothing measured
		{0.5, []float64{1, 2}, math.NaN()},       // shapes disagree
	}
	for _, c := range cases {
		got := quantile(c.q, bounds, c.buckets)
		if math.IsNaN(c.want) != math.IsNaN(got) || (!math.IsNaN(got) && math.Abs(got-c.want) > 1e-9) {
			t.Errorf("quantile(%v, %v) = %v, want %v", c.q, c.buckets, got, c.want)
		}
	}
}
