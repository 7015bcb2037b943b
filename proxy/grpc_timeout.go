package proxy

import (
	"strconv"
	"time"
)

// parseGRPCTimeout reads a grpc-timeout header: at most 8 digits and a
// unit, H, M, S, m (milli), u (micro) or n (nano), as gRPC's HTTP/2
// mapping has it. A value too large for a time.Duration is capped.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	var n int64
	for _, c := range []byte(v[:len(v)-1]) {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if n > int64(1<<63-1)/int64(unit) {
		return 1<<63 - 1, true
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d in the finest unit that keeps it within 8
// digits, rounding up so that the instance never gets less than is left.
func formatGRPCTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n" // already over: the instance gives up at once
	}
	const max = 1e8 - 1
	for _, u := range []struct {
		d time.Duration
		c byte
	}{{time.Nanosecond, 'n'}, {time.Microsecond, 'u'}, {time.Millisecond, 'm'}, {time.Second, 'S'}, {time.Minute, 'M'}, {time.Hour, 'H'}} {
		n := d / u.d
		if d%u.d != 0 {
			n++ // up, without the overflow of adding first
		}
		if n <= max {
			return strconv.FormatInt(int64(n), 10) + string(u.c)
		}
	}
	return "99999999H"
}
