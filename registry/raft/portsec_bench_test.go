package raft

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/pier-dev/pier/deploy/testca"
)

// BenchmarkGroupWrites is the cost of the server port's TLS on the write
// path: KV writes applied on the leader of three servers in memory (no
// fsync, so the transport's share shows), 64 writers at once, on a plain
// port, with keyring identities and with certificates. Compare the three
// as ratios of one run (deploy/bench/README.md).
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
			var n atomic.Int64
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0))) // 64 writers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					k := fmt.Sprintf("k%d", n.Add(1)%1000)
					if r, err := lead.n.KV(KVOp{Verb: KVSet, Key: k, Value: value}); err != nil || !r.OK {
						b.Errorf("write: %+v %v", r, err)
						return
					}
				}
			})
		})
	}
}
