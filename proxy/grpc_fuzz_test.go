package proxy

import (
	"testing"
	"time"
)

// FuzzGRPCTimeout: grpc-timeout comes from the network. Parsing never
// panics, accepts only the spec's form, and what formatGRPCTimeout writes
// reads back as at least the duration it was given.
func FuzzGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1S", "100m", "99999999H", "0n", "5u", "12M", "", "S", "123456789S", "-1S", "1s", "1.5S"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseGRPCTimeout(v)
		if !ok {
			return
		}
		if len(v) < 2 || len(v) > 9 || d < 0 {
			t.Fatalf("parseGRPCTimeout(%q) = %v, true", v, d)
		}
		w := formatGRPCTimeout(d)
		back, ok := parseGRPCTimeout(w)
		if !ok || (d > 0 && back < d) {
			t.Fatalf("%q is %v; formatted %q, which reads %v %v", v, d, w, back, ok)
		}
	})
}

func TestGRPCTimeout(t *testing.T) {
	for v, want := range map[string]time.Duration{"1S": time.Second, "100m": 100 * time.Millisecond, "2H": 2 * time.Hour, "7u": 7 * time.Microsecond, "0n": 0} {
		if d, ok := parseGRPCTimeout(v); !ok || d != want {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v", v, d, ok)
		}
	}
	for _, v := range []string{"", "S", "1s", "123456789S", "1.5S", " 1S", "-1S"} {
		if _, ok := parseGRPCTimeout(v); ok {
			t.Errorf("parseGRPCTimeout(%q) accepted", v)
		}
	}
	for d, want := range map[time.Duration]string{time.Second: "1000000u", 30 * time.Second: "30000000u", time.Hour: "3600000m", 1500 * time.Millisecond: "1500000u", 7 * time.Nanosecond: "7n"} {
		if got := formatGRPCTimeout(d); got != want {
			t.Errorf("formatGRPCTimeout(%v) = %q, want %q", d, got, want)
		}
	}
}
