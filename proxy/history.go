package proxy

import (
	"math"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pier-dev/pier/history"
)

// histState is what the history sampler last read of a route's counters,
// to chart the difference. Only the sampler's goroutine touches it.
type histState struct {
	classes [3]float64 // 2xx (1xx–3xx), 4xx, 5xx answers so far
	buckets []uint64   // the latency histogram's cumulative counts so far
}

// delta is one route's traffic over an interval.
type delta struct {
	classes [3]float64
	buckets []float64 // per bucket, not cumulative
}

// Sample implements history.Source: per route and per service with a
// route, requests/s by status class and p50/p99 latency since the last
// point, read from the proxy's Prometheus counters (so it costs the
// request path nothing), and per route its healthy instances.
func (p *Proxy) Sample(r *history.Recorder) {
	rt := p.syncRoutes()
	secs := r.Elapsed().Seconds()
	counts := p.met.classCounts()
	bySvc := map[string]*delta{}
	var bounds []float64
	for _, rr := range rt.all {
		name := rr.Host + rr.Path
		r.Set(history.Route, name, rr.Service, history.Healthy, float64(p.pool(rr).Len()))
		st := rr.stats
		if st == nil || secs <= 0 {
			continue
		}
		d, b := st.advance(counts[st.key])
		bounds = b
		for i, v := range d.classes {
			r.Set(history.Route, name, rr.Service, history.Req2xx+i, v/secs)
		}
		r.Set(history.Route, name, rr.Service, history.P50, quantile(0.5, b, d.buckets))
		r.Set(history.Route, name, rr.Service, history.P99, quantile(0.99, b, d.buckets))
		sum := bySvc[rr.Service]
		if sum == nil {
			sum = &delta{buckets: make([]float64, len(d.buckets))}
			bySvc[rr.Service] = sum
		}
		for i, v := range d.classes {
			sum.classes[i] += v
		}
		for i, v := range d.buckets {
			if i < len(sum.buckets) {
				sum.buckets[i] += v
			}
		}
	}
	for svc, d := range bySvc {
		for i, v := range d.classes {
			r.Set(history.Service, svc, svc, history.Req2xx+i, v/secs)
		}
		r.Set(history.Service, svc, svc, history.P50, quantile(0.5, bounds, d.buckets))
		r.Set(history.Service, svc, svc, history.P99, quantile(0.99, bounds, d.buckets))
	}
}

// classCounts reads the request counters by route and status class.
func (m *proxyMetrics) classCounts() map[routeKey][3]float64 {
	out := map[routeKey][3]float64{}
	if m == nil {
		return out
	}
	ch := make(chan prometheus.Metric, 64)
	go func() { m.requests.Collect(ch); close(ch) }()
	var d dto.Metric
	for c := range ch {
		d.Reset()
		if c.Write(&d) != nil || d.Counter == nil {
			continue
		}
		var k routeKey
		class := 0
		for _, l := range d.Label {
			switch l.GetName() {
			case "route":
				k.route = l.GetValue()
			case "service":
				k.service = l.GetValue()
			case "code":
				if code, _ := strconv.Atoi(l.GetValue()); code >= 500 {
					class = 2
				} else if code >= 400 {
					class = 1
				}
			}
		}
		v := out[k]
		v[class] += d.Counter.GetValue()
		out[k] = v
	}
	return out
}

// advance returns the traffic since the last call and the histogram's
// bucket bounds (+Inf last).
func (st *routeStats) advance(classes [3]float64) (delta, []float64) {
	var d delta
	for i := range classes {
		d.classes[i] = max(0, classes[i]-st.hist.classes[i])
	}
	st.hist.classes = classes
	var m dto.Metric
	h, ok := st.duration.(prometheus.Metric)
	if !ok || h.Write(&m) != nil || m.Histogram == nil {
		return d, nil
	}
	bs := m.Histogram.Bucket
	bounds := make([]float64, len(bs)+1)
	cum := make([]uint64, len(bs)+1)
	for i, b := range bs {
		bounds[i], cum[i] = b.GetUpperBound(), b.GetCumulativeCount()
	}
	bounds[len(bs)], cum[len(bs)] = math.Inf(1), m.Histogram.GetSampleCount()
	d.buckets = make([]float64, len(cum))
	var below uint64 // growth of the previous bucket's cumulative count
	for i, c := range cum {
		var was uint64
		if i < len(st.hist.buckets) {
			was = st.hist.buckets[i]
		}
		grew := c - min(c, was) // counts only grow
		d.buckets[i] = float64(grew - min(grew, below))
		below = grew
	}
	st.hist.buckets = cum
	return d, bounds
}

// quantile estimates the q-quantile of observations counted per bucket
// (bounds are upper bounds, +Inf last) by linear interpolation inside the
// bucket, as Prometheus's histogram_quantile does; NaN without
// observations. An answer in the +Inf bucket is the highest finite bound.
func quantile(q float64, bounds, perBucket []float64) float64 {
	total := 0.0
	for _, v := range perBucket {
		total += v
	}
	if total == 0 || len(bounds) != len(perBucket) {
		return math.NaN()
	}
	rank := q * total
	seen, lower := 0.0, 0.0
	for i, v := range perBucket {
		if seen+v >= rank && v > 0 {
			if math.IsInf(bounds[i], 1) {
				return lower
			}
			return lower + (bounds[i]-lower)*(rank-seen)/v
		}
		seen += v
		if !math.IsInf(bounds[i], 1) {
			lower = bounds[i]
		}
	}
	return lower
}
