package health

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pier-dev/pier/registry"
)

// BenchmarkSync measures one sync of a Runner with 10,000 running checks
// after 100 of them changed status: the work a burst of results costs the
// runner, at most once per minSyncGap.
func BenchmarkSync(b *testing.B) {
	reg := newCatalog(b)
	const n = 10000
	for i := range n / 10 {
		id := fmt.Sprintf("svc%d", i)
		checks := make([]registry.Check, 10)
		for j := range checks {
			checks[j] = registry.Check{CheckID: fmt.Sprintf("%s:%d", id, j), Name: "c", Status: registry.StatusCritical,
				Definition: registry.CheckDefinition{TTL: registry.Duration(time.Hour)}}
		}
		if err := reg.RegisterService(registry.Service{ID: id, Name: "bench"}, checks, registry.SourceAPI); err != nil {
			b.Fatal(err)
		}
	}
	r, err := New(Config{Catalog: reg})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.ctx = ctx // as Run does, without its loop: the benchmark drives sync
	defer func() {
		cancel()
		r.wg.Wait()
	}()
	r.sync(reg.Snapshot())
	statuses := []registry.Status{registry.StatusPassing, registry.StatusCritical}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		for j := range 100 {
			reg.UpdateCheck(fmt.Sprintf("svc%d:%d", (i*100+j)%(n/10), j%10), statuses[i%2], "")
		}
		snap := reg.Snapshot()
		b.StartTimer()
		r.sync(snap)
	}
}
