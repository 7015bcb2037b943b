package main

import (
	"math/bits"
	"time"
)

// hist is a log-linear latency histogram in the manner of HdrHistogram:
// exact below 128 ns, then 64 buckets per power of two, so a quantile is
// within 1.6% of the true value, in 30 KB whatever the number of samples.
// One per client goroutine, merged at the end: recording takes no lock.
type hist struct {
	counts [57*64 + 128]uint64 // the last bucket (s = 57) starts at 2^63
	n      uint64
	max    time.Duration
	sum    time.Duration // for the mean, which the buckets only approximate
}

const subBits = 7 // 2^subBits values below the first shift; half that per power of two above

func bucket(v uint64) int {
	l := bits.Len64(v)
	if l <= subBits {
		return int(v)
	}
	s := l - subBits
	return s<<(subBits-1) + int(v>>s) // v>>s is in [64, 128)
}

// lowest returns the smallest value that falls in bucket i.
func lowest(i int) uint64 {
	if i < 1<<subBits {
		return uint64(i)
	}
	s := i>>(subBits-1) - 1
	top := uint64(i - s<<(subBits-1))
	return top << s
}

func (h *hist) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucket(uint64(d))]++
	h.n++
	h.sum += d
	h.max = max(h.max, d)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
}

// mean returns the exact mean of the samples recorded.
func (h *hist) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// quantile returns the middle of the bucket that holds the q-th sample.
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			if i == len(h.counts)-1 {
				return h.max
			}
			lo, hi := lowest(i), lowest(i+1)
			return min(time.Duration(lo+(hi-lo)/2), h.max)
		}
	}
	return h.max
}
