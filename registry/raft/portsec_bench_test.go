package raft

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pier-dev/pier/deploy/testca"
)

// BenchmarkGroupWrites is the cost of the server port's TLS on the write
// path: KV writes applied on the leader of three servers in memory (no
// fsync, so the transport's share shows), 64 writers at once, on a plain
// port, with keyring identities and with certificates. Compare the three
// as ratios of one run (deploy/bench/README.md). Linux and the BSDs
// (getrusage).
func BenchmarkGroupWrites(b *testing.B) {
	ca := testca.New(b, b.TempDir(), "bench")
	cert := ca.Issue(b, "server.dc1.consul", nil)
	certSec, err := CertSecurity(CertConfig{CAFile: ca.File, CertFile: cert.CertFile, KeyFile: cert.KeyFile, VerifyIncoming: true, VerifyOutgoing: true}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		sec  *Security
	}{
		{"plain", nil},
		{"keyring", KeyringSecurity(newTestKeyring(gossipKey(7)).src, nil)},
		{"certs", certSec},
	} {
		b.Run(c.name, func(b *testing.B) {
			ms, lead := groupOf(b, "b", 3, memberOpts{sec: c.sec})
			defer func() {
				for _, m := range ms {
					m.stop()
				}
			}()
			value := make([]byte, 100)
			var n, failed atomic.Int64
			var leader atomic.Pointer[member]
			leader.Store(lead)
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0))) // 64 writers
			cpu0 := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := fmt.Sprintf("k%d", n.Add(1)%1000)
					if r, err := leader.Load().n.KV(KVOp{Verb: KVSet, Key: k, Value: value}); err != nil || !r.OK {
						// An election on a loaded machine (the tests'
						// short timeouts): counted, and on to the new
						// leader.
						failed.Add(1)
						for _, m := range ms {
							if m.n.IsLeader() {
								leader.Store(m)
							}
						}
					}
				}
			})
			b.StopTimer()
			// The process's CPU per write (all three servers are in it):
			// on a shared machine, wall time per write mostly measures
			// the other tenants.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			b.ReportMetric(float64(failed.Load()), "failed")
		})
	}
}

// cpuTime is the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
