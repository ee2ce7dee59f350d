package metrics

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ledgerValues gathers the registry and returns the ledger series by status.
func ledgerValues(t *testing.T, m *Metrics) map[string]float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "lockstep_ledger_events" {
			continue
		}
		for _, s := range f.GetMetric() {
			out[s.GetLabel()[0].GetValue()] = s.GetGauge().GetValue()
		}
	}
	return out
}

// Eight concurrent scrapes and any number within LedgerMaxAge read the
// ledger once; an older count is read again; a failed read is not retried
// by every scrape either; at max age 0 every scrape reads.
func TestLedgerCountsReadOncePerMaxAge(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	var fail atomic.Bool
	m := New()
	m.RegisterLedger(func(context.Context) (map[string]int64, error) {
		n := calls.Add(1)
		if fail.Load() {
			return nil, errors.New("database down")
		}
		return map[string]int64{"processed": int64(n), "failed": 0, "ignored": 0}, nil
	}, slog.New(slog.DiscardHandler))
	var mu sync.Mutex
	clock := time.Unix(1_800_000_000, 0)
	m.ledger.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := m.Registry.Gather(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := calls.Load(); got != 1 {
		t.Fatalf("8 concurrent scrapes read the ledger %d times, want 1", got)
	}
	advance(LedgerMaxAge - time.Second)
	if v := ledgerValues(t, m); v["processed"] != 1 || calls.Load() != 1 {
		t.Fatalf("a scrape within the max age: %v after %d reads, want the first count and no read", v, calls.Load())
	}
	advance(time.Second)
	if v := ledgerValues(t, m); v["processed"] != 2 || calls.Load() != 2 {
		t.Fatalf("a scrape at the max age: %v after %d reads, want a second read", v, calls.Load())
	}

	fail.Store(true)
	advance(LedgerMaxAge)
	if v := ledgerValues(t, m); len(v) != 0 {
		t.Fatalf("a failed read exported %v", v)
	}
	ledgerValues(t, m)
	if got := calls.Load(); got != 3 {
		t.Fatalf("%d reads, want a failed read remembered for the max age (3)", got)
	}

	fail.Store(false)
	m.SetLedgerMaxAge(0)
	ledgerValues(t, m)
	ledgerValues(t, m)
	if got := calls.Load(); got != 5 {
		t.Fatalf("at max age 0: %d reads, want one per scrape (5)", got)
	}
}
