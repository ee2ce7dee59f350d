package integration_test

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// BenchmarkSweepMissingMemory measures what one sweeper pass holds when
// every event of the window is missing from the ledger: the peak of the
// live heap (HeapInuse after a forced GC, sampled every second) during the
// pass, above what it was before (the fake Stripe's own copy of the events
// is in both). Events are sessions without a
// customer, which the processor records as ignored: one insert each, so
// the pass is cheap and the events are what the heap holds.
//
//	go run ./internal/dbtest/cmd/pgenv test -- go test -run '^$' -bench BenchmarkSweepMissingMemory -benchtime 1x ./integration_test/
func BenchmarkSweepMissingMemory(b *testing.B) {
	const missing = 20_000
	for range b.N {
		bb := setup(b, withMaxConns(4))
		created := bb.stripe.Now().Add(-time.Hour).Truncate(time.Second)
		for i := range missing {
			sess := stripefake.Session{ID: stripefake.NewID("cs_"), Status: "complete", PaymentStatus: "paid",
				ClientReferenceID: "user-mem", Created: created}
			bb.stripe.EmitAt("checkout.session.completed", stripefake.SessionJSON(sess, nil, stripefake.DefaultAPIVersion),
				created.Add(time.Duration(i%3000)*time.Second))
		}
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.HeapInuse
		var peak atomic.Uint64
		peak.Store(before)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ms runtime.MemStats
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Second):
				}
				runtime.GC()
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}()
		start := time.Now()
		res, err := bb.app.Bulk.Sweep(context.Background(), billing.SweepOptions{Owner: "bench"})
		close(stop)
		wg.Wait()
		if err != nil || res.Missing != missing || res.Recovered != missing {
			b.Fatalf("sweep: %+v, %v; want %d missing and recovered", res, err, missing)
		}
		runtime.GC()
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(peak.Load()-before)/(1<<20), "peak-MB-above-start")
		b.ReportMetric(float64(int64(ms.HeapInuse)-int64(before))/(1<<20), "MB-after-GC")
		b.ReportMetric(float64(peak.Load()-before)/missing, "peak-B/missing-event")
		b.ReportMetric(time.Since(start).Seconds(), "pass-s")
	}
}
